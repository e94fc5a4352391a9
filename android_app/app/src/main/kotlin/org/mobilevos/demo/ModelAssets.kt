package org.mobilevos.demo

import android.content.Context
import org.mobilevos.core.Manifest
import java.io.File

/**
 * The export in the APK's assets/model/ (put there by android_app/scripts/prepare_assets.sh, an `mvos export`
 * of the shipped weights), copied once into the app's files so LiteRT can map each graph from a file. A copy
 * whose manifest differs from the APK's is replaced (a newer APK); each file lands under a temporary name first.
 */
object ModelAssets {
    private const val ASSET_DIR = "model"

    fun install(context: Context): Pair<File, Manifest> {
        val folder = File(context.filesDir, ASSET_DIR)
        val bundled = context.assets.open("$ASSET_DIR/${Manifest.NAME}").use { it.readBytes().decodeToString() }
        val manifest = Manifest.parse(bundled, "assets/$ASSET_DIR/${Manifest.NAME}")
        val installed = File(folder, Manifest.NAME)
        if (!installed.isFile || installed.readText() != bundled) {
            for (graph in manifest.files) copy(context, "$ASSET_DIR/${graph.path}", File(folder, graph.path))
            copy(context, "$ASSET_DIR/${Manifest.NAME}", installed) // last: marks a complete copy
        }
        manifest.checkFiles(folder, checkHashes = false) // hashes were checked by mvos export; sizes suffice here
        return folder to manifest
    }

    private fun copy(context: Context, asset: String, target: File) {
        target.parentFile!!.mkdirs()
        val tmp = File(target.parentFile, ".${target.name}.partial")
        context.assets.open(asset).use { input -> tmp.outputStream().use { input.copyTo(it) } }
        check(tmp.renameTo(target)) { "cannot write $target" }
    }
}
