package org.mobilevos.core

import java.io.File
import java.nio.file.Files
import kotlin.test.Test
import kotlin.test.assertContains
import kotlin.test.assertEquals
import kotlin.test.assertTrue
import kotlin.test.assertFailsWith

class ManifestTest {
    private val text = File(Golden.dir, "export/manifest.json").readText()

    @Test
    fun readsTheManifestTheExporterWrote() {
        val m = Golden.manifest
        assertEquals(listOf(64, 112), m.inputSize.toList())
        assertEquals(listOf(4, 7), m.featureSize.toList())
        assertEquals(2, m.maxObjects)
        assertEquals(listOf("fp32", "int8"), m.precisions())
        val decoder = m.entry("fp32", "decoder", Golden.queueLen)!!
        assertEquals(listOf(Golden.queueLen, m.keyDim, 4, 7), decoder.input("mem_keys").shape.toList())
        assertEquals(listOf(Golden.queueLen, 4, 7, 2 * m.valueDim), decoder.input("mem_values").shape.toList())
        assertEquals(listOf(2, 64, 112, 1), decoder.output("logits").shape.toList())
        assertEquals(listOf(1, 64, 112, 3), m.entry("fp32", "key_encoder")!!.input("frame").shape.toList())
        assertEquals("fp32/decoder_T3.tflite", decoder.path)
        val int8 = m.entry("int8", "decoder", Golden.queueLen)!!.input("mem_keys")
        assertEquals("int8", int8.dtype)
        assertTrue(int8.scale!! > 0f && int8.zeroPoint!! in -128..127)
    }

    @Test
    fun theMemoryProtocolIsTheOneTheManifestDocuments() {
        val slots = Golden.manifest.writeSlots
        assertEquals(setOf(1, 2, 3, 5), slots.keys)
        for ((t, expected) in slots) assertEquals(expected, expected.indices.map { MemoryProtocol.writeSlot(it, t) })
        assertEquals(listOf(1, 20), Golden.manifest.queueLengthRange.toList())
        val memorised = Golden.manifest.memorisedFrames
        assertEquals(setOf(1, 2, 5), memorised.keys)
        for ((k, expected) in memorised) assertEquals(expected, (0 until 12).filter { MemoryProtocol.memorised(it, 0, k) })
        assertEquals(10, Golden.manifest.memEvery) // the default interval, which the weights were validated with
    }

    @Test
    fun manifestsFromBeforeTheMemoryIntervalMemoriseEveryFrame() {
        assertEquals(1, Manifest.parse(text.replace("\"mem_every\": 10,", "")).memEvery)
        assertContains(refused { it.replace("\"mem_every\": 10", "\"mem_every\": 0") }, "mem_every must be at least 1")
    }

    private fun refused(edit: (String) -> String): String =
        assertFailsWith<ManifestException> { Manifest.parse(edit(text), "manifest.json") }.message!!

    @Test
    fun badManifestsAreRefusedWithTheFirstProblem() {
        assertContains(refused { it.replace("\"format_version\": 2", "\"format_version\": 7") }, "format version 7")
        assertContains(refused { it.replace("\"format\": \"mobilevos-tflite\"", "\"format\": \"other\"") },
            "not a mobilevos TFLite manifest")
        assertContains(refused { it.replace("\"input_size\"", "\"input_sizes\"") }, "missing field 'input_size'")
        assertContains(refused { Regex("\"feature_size\": \\[\\s*4").replace(it, "\"feature_size\": [0") },
            "feature_size must be 2 positive integers")
        assertContains(refused { it.replace("\"path\": \"fp32/key_encoder.tflite\"", "\"path\": \"fp32/other.tflite\"") },
            "should be at fp32/key_encoder.tflite")
        assertContains(refused { it.replace("\"subgraph\": \"value_encoder\"", "\"subgraph\": \"encoder\"") },
            "unknown subgraph 'encoder'")
        assertContains(refused { Regex("\"shape\": \\[\\s*1").replaceFirst(it, "\"shape\": [-1") }, "has shape")
        assertContains(refused { it.substring(0, it.length / 2) }, "cannot read manifest.json")
    }

    @Test
    fun missingFilesAreRefused() {
        val folder = Files.createTempDirectory("export").toFile()
        File(folder, Manifest.NAME).writeText(text)
        val manifest = Manifest.read(folder)
        val error = assertFailsWith<ManifestException> { manifest.checkFiles(folder) }
        assertContains(error.message!!, "fp32/key_encoder.tflite is listed in the manifest but missing")
        // every graph present, one cut short: refused by size; one of the right size but other bytes: by hash
        for (f in manifest.files) File(folder, f.path).apply { parentFile.mkdirs() }.writeBytes(ByteArray(f.bytes.toInt()))
        val first = File(folder, manifest.files[0].path)
        first.writeBytes(ByteArray(10))
        assertContains(assertFailsWith<ManifestException> { manifest.checkFiles(folder, checkHashes = false) }.message!!,
            "has 10 bytes, the manifest says")
        first.writeBytes(ByteArray(manifest.files[0].bytes.toInt()))
        manifest.checkFiles(folder, checkHashes = false)
        assertContains(assertFailsWith<ManifestException> { manifest.checkFiles(folder) }.message!!,
            "does not match the sha256")
        assertContains(assertFailsWith<ManifestException> { Manifest.read(File(folder, "nothing")) }.message!!, "no manifest.json")
        folder.deleteRecursively()
    }
}
