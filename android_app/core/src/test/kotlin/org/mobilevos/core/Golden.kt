package org.mobilevos.core

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** The golden vectors android_app/scripts/make_golden.py recorded from the Python engine (test resources). */
object Golden {
    val dir: File = File(Golden::class.java.getResource("/golden/index.json")!!.toURI()).parentFile

    @Suppress("UNCHECKED_CAST")
    val index = Json.parse(File(dir, "index.json").readText()) as Map<String, Any?>

    val manifest: Manifest by lazy { Manifest.read(File(dir, "export")) }

    /** What the Python engine did with one precision's graphs: its frames and its graph calls in order. */
    class Run(val frames: List<Map<String, Any?>>, val calls: List<Map<String, Any?>>)

    @Suppress("UNCHECKED_CAST")
    fun run(precision: String): Run {
        val run = (index["runs"] as Map<String, Any?>)[precision] as Map<String, Any?>
        return Run(run["frames"] as List<Map<String, Any?>>, run["calls"] as List<Map<String, Any?>>)
    }

    val frames = run("fp32").frames

    /** fp32 on the same clip at a camera size smaller than the export's: enlarged in, shrunk back out. */
    const val ENLARGED = "fp32_enlarged"

    /** int8 graphs, with the frames the memory keeps encoded by the fp32 encoders (`memory_precision`). */
    const val FP32_MEMORY = "int8_fp32_memory"

    val calls = run("fp32").calls

    val queueLen = (index["queue_len"] as Long).toInt()

    val memEvery = (index["mem_every"] as Long).toInt()

    fun shape(entry: Any?): IntArray = ((entry as Map<*, *>)["shape"] as List<*>).map { (it as Long).toInt() }.toIntArray()

    private fun raw(entry: Any?): ByteArray = File(dir, (entry as Map<*, *>)["file"] as String).readBytes()

    fun floats(entry: Any?): FloatArray {
        val buffer = ByteBuffer.wrap(raw(entry)).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
        return FloatArray(buffer.remaining()).also { buffer.get(it) }
    }

    fun bytes(entry: Any?): ByteArray = raw(entry)

    fun dtype(entry: Any?): String = (entry as Map<*, *>)["dtype"] as String

    /** A recorded array as the engine passes it: int8 steps (of [spec]'s quantisation) or floats. */
    fun tensor(entry: Any?, spec: TensorSpec): Tensor =
        if (dtype(entry) == "int8") Int8Tensor(bytes(entry), spec.scale!!, spec.zeroPoint!!) else FloatTensor(floats(entry))

    /** Channel-planar maps (C x H x W) of a C,H,W array. */
    fun planes(entry: Any?): Array<FloatArray> {
        val (c, h, w) = shape(entry)
        val data = floats(entry)
        return Array(c) { data.copyOfRange(it * h * w, (it + 1) * h * w) }
    }

    fun maxDiff(a: FloatArray, b: FloatArray): Float {
        require(a.size == b.size) { "sizes ${a.size} and ${b.size}" }
        var worst = 0f
        for (i in a.indices) worst = maxOf(worst, kotlin.math.abs(a[i] - b[i]))
        return worst
    }
}
