package org.mobilevos.core

import java.io.File
import java.nio.file.Files
import kotlin.test.Test
import kotlin.test.assertEquals

/**
 * The benchmark mode's CSV, written from fixed timings: it must be exactly the fixture the Python side reads
 * (tests/data/app_benchmark.csv, pulled through the adb simulator by `mvos bench --app`). Set
 * MVOS_UPDATE_FIXTURES=1 to rewrite the fixture after a deliberate format change.
 */
class BenchmarkCsvTest {
    /** The recorder's CSV, which must be exactly the fixture `tests/data/<name>` the Python side reads. */
    private fun writtenAsFixture(recorder: BenchmarkRecorder, measuredAt: String, name: String): File {
        val out = File(Files.createTempDirectory("app").toFile(), "benchmark.csv")
        recorder.write(out, measuredAt = measuredAt)
        val fixture = File(System.getProperty("mvos.repo", "../.."), "tests/data/$name")
        if (System.getenv("MVOS_UPDATE_FIXTURES") == "1") out.copyTo(fixture, overwrite = true)
        assertEquals(fixture.readText(), out.readText())
        return out
    }

    @Test
    fun writesRowsMvosBenchReads() {
        val recorder = BenchmarkRecorder("R5CT12345", "SM-S901B", "mobilenetv2", "int8", "gpu", 2, 4, "1280x720")
        val probs = Array(3) { FloatArray(1) } // background + 2 objects
        for (frame in 0 until 4) {
            val millis = mapOf("key_encoder" to 8.0 + frame, "value_encoder" to 10.0 + 2 * frame, "decoder" to 12.0 - frame)
            recorder.add(FrameResult(probs, ByteArray(1), millis), frameMillis = 35.0 + frame)
        }
        assertEquals(4, recorder.frames)
        val out = writtenAsFixture(recorder, "2026-12-02T10:00:00Z", "app_benchmark.csv")
        val header = out.readLines().first().split(",")
        assertEquals(BenchmarkRecorder.COLUMNS, header)
        // the value encoder per call: two objects share 10..16 ms per frame
        val value = out.readLines().first { it.contains(",value_encoder,") }.split(",")
        assertEquals("6500.0", value[header.indexOf("avg_us")])
        assertEquals("0", value[header.indexOf("queue_len")])
    }

    /** With fp32 memory encoders, int8's graphs and fp32's are rows of their own precision; the whole frame is
     *  int8's with memory_precision fp32 (tests/data/app_benchmark_memory_precision.csv). */
    @Test
    fun memoryEncodersAreRowsOfTheirOwnPrecision() {
        val recorder = BenchmarkRecorder("R5CT12345", "SM-S901B", "mobilenetv2", "int8", "cpu", 2, 4, "1280x720",
            memoryPrecision = "fp32")
        val probs = Array(3) { FloatArray(1) } // background + 2 objects
        for (frame in 0 until 10) { // frames 0 and 5 memorised
            val millis = if (frame % 5 == 0) {
                mapOf(MemoryEncoders.timing("key_encoder") to 25.0, MemoryEncoders.timing("value_encoder") to 60.0,
                    "decoder" to 18.0)
            } else {
                mapOf("key_encoder" to 11.0 + frame % 2, "decoder" to 18.0)
            }
            recorder.add(FrameResult(probs, ByteArray(1), millis), frameMillis = if (frame % 5 == 0) 110.0 else 33.0)
        }
        val out = writtenAsFixture(recorder, "2026-12-03T10:00:00Z", "app_benchmark_memory_precision.csv")
        val header = out.readLines().first().split(",")
        val rows = out.readLines().drop(1).map { it.split(",") }.associateBy {
            it[header.indexOf("subgraph")] to it[header.indexOf("precision")]
        }
        assertEquals(setOf("key_encoder" to "fp32", "value_encoder" to "fp32", "key_encoder" to "int8",
            "decoder" to "int8", "frame" to "int8"), rows.keys)
        assertEquals("30000.0", rows.getValue("value_encoder" to "fp32")[header.indexOf("avg_us")]) // per object
        assertEquals("2", rows.getValue("key_encoder" to "fp32")[header.indexOf("runs")])
        assertEquals("fp32", rows.getValue("frame" to "int8")[header.indexOf("memory_precision")])
        assertEquals("", rows.getValue("key_encoder" to "fp32")[header.indexOf("memory_precision")])
    }
}
