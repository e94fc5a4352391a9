package org.mobilevos.core

import java.io.File
import java.time.OffsetDateTime
import java.time.format.DateTimeFormatter

/**
 * The demo app's benchmark mode: N frames of live segmentation timed per graph and per whole frame, written as
 * rows of `mvos bench`'s results CSV (source "app"), which `mvos bench --app` pulls over adb and plots beside
 * `benchmark_model`'s. Encoders are recorded with queue length 0, as `mvos bench` records them; the value
 * encoder per call (`mvos plot` multiplies it by the number of objects).
 */
class BenchmarkRecorder(
    private val device: String,
    private val deviceModel: String,
    private val variant: String,
    private val precision: String,
    private val delegate: String, // gpu | cpu
    private val queueLen: Int,
    private val threads: Int,
    private val cameraSize: String, // e.g. 1280x720
    private val memoryPrecision: String? = null, // the memory encoders' precision, when the engine has them
) {
    private val samples = LinkedHashMap<String, MutableList<Double>>() // subgraph -> milliseconds per frame
    private var objects = 0

    val frames: Int get() = samples["frame"]?.size ?: 0

    /** One frame's graph times and its whole time (pre/post-processing included). */
    fun add(result: FrameResult, frameMillis: Double) {
        objects = maxOf(objects, result.probs.size - 1)
        for ((name, ms) in result.millis) {
            val perCall = if (MemoryEncoders.timedGraph(name).first == "value_encoder") ms / maxOf(1, result.probs.size - 1) else ms
            samples.getOrPut(name) { ArrayList() }.add(perCall)
        }
        samples.getOrPut("frame") { ArrayList() }.add(frameMillis)
    }

    fun rows(measuredAt: String = OffsetDateTime.now().format(DateTimeFormatter.ISO_OFFSET_DATE_TIME)):
        List<Map<String, String>> {
        return samples.map { (name, ms) ->
            val us = ms.map { it * 1000 }.sorted()
            val mean = us.average()
            val std = kotlin.math.sqrt(us.sumOf { (it - mean) * (it - mean) } / us.size)
            // each graph's row is its own precision's; the whole frame is the engine's, memory encoders included
            val (subgraph, memory) = MemoryEncoders.timedGraph(name)
            mapOf(
                "device" to device, "variant" to variant, "delegate" to delegate,
                "precision" to (if (memory) requireNotNull(memoryPrecision) { "$name timed without a memory precision" } else precision),
                "memory_precision" to (if (subgraph == "frame") memoryPrecision ?: "" else ""),
                "queue_len" to (if (subgraph in Manifest.ENCODERS) 0 else queueLen).toString(),
                "subgraph" to subgraph, "source" to "app", "avg_us" to fmt(mean), "std_us" to fmt(std),
                "min_us" to fmt(us.first()), "max_us" to fmt(us.last()), "median_us" to fmt(percentile(us, 0.5)),
                "p95_us" to fmt(percentile(us, 0.95)), "runs" to us.size.toString(), "threads" to threads.toString(),
                "objects" to objects.toString(), "camera_size" to cameraSize, "device_model" to deviceModel,
                "measured_at" to measuredAt,
            )
        }
    }

    /** Written to a temporary name and renamed when complete, like every output of the project. */
    fun write(file: File, measuredAt: String? = null) {
        val rows = if (measuredAt == null) rows() else rows(measuredAt)
        require(rows.isNotEmpty()) { "no frames recorded" }
        val tmp = File(file.parentFile, ".${file.name}.partial")
        tmp.writeText(buildString {
            append(COLUMNS.joinToString(",")).append('\n')
            for (row in rows) append(COLUMNS.joinToString(",") { csvField(row[it] ?: "") }).append('\n')
        })
        if (!tmp.renameTo(file)) {
            tmp.delete()
            throw java.io.IOException("cannot write $file")
        }
    }

    companion object {
        val COLUMNS = listOf("device", "variant", "precision", "delegate", "queue_len", "subgraph", "source", "avg_us",
            "std_us", "min_us", "max_us", "median_us", "p95_us", "runs", "threads", "objects", "camera_size",
            "device_model", "measured_at", "memory_precision")

        private fun fmt(v: Double) = "%.1f".format(java.util.Locale.ROOT, v)

        private fun percentile(sorted: List<Double>, q: Double): Double = sorted[minOf(sorted.size - 1, (q * sorted.size).toInt())]

        private fun csvField(value: String) =
            if (value.any { it == ',' || it == '"' || it == '\n' }) "\"" + value.replace("\"", "\"\"") + "\"" else value
    }
}
