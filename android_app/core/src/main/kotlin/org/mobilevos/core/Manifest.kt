package org.mobilevos.core

import java.io.File
import java.security.MessageDigest

/**
 * The export's manifest.json (format 2), read and checked as `mvos.runtime.manifest` does: the same fields,
 * the same checks, the same one-line messages. Graph files live where [graphPath] says.
 */
class ManifestException(message: String) : Exception(message)

data class TensorSpec(
    val name: String,
    val shape: IntArray,
    val dtype: String, // float32, or int8: real = scale * (q - zeroPoint)
    val meaning: String,
    val signatureOutput: String?,
    val scale: Float?,
    val zeroPoint: Int?,
) {
    val size: Int get() = shape.fold(1) { a, b -> a * b }
}

data class GraphFile(
    val path: String,
    val sha256: String,
    val bytes: Long,
    val precision: String,
    val subgraph: String,
    val queueLen: Int?,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
    val signature: String, // the graph's one signature (serving_default)
) {
    fun input(name: String): TensorSpec = inputs.first { it.name == name }
    fun output(name: String): TensorSpec = outputs.first { it.name == name }
}

data class Manifest(
    val variant: String,
    val inputSize: IntArray, // H, W the graphs take
    val featureSize: IntArray,
    val stride: Int,
    val keyDim: Int,
    val valueDim: Int,
    val maxObjects: Int,
    val topK: Int?,
    val mean: FloatArray,
    val std: FloatArray,
    val writeSlots: Map<Int, List<Int?>>, // worked examples of the memory protocol, checked by the tests
    val memorisedFrames: Map<Int, List<Int>>, // which of frames 0..11 are memorised, per mem_every (ditto)
    val memEvery: Int, // the memory interval an engine uses unless told otherwise
    val queueLengthRange: IntArray,
    val files: List<GraphFile>,
) {
    fun entry(precision: String, subgraph: String, queueLen: Int? = null): GraphFile? =
        files.firstOrNull { it.precision == precision && it.subgraph == subgraph && (subgraph != "decoder" || it.queueLen == queueLen) }

    /** The decoder queue lengths exported in [precision], shortest first. */
    fun queueLengths(precision: String): List<Int> =
        files.filter { it.precision == precision && it.subgraph == "decoder" }.mapNotNull { it.queueLen }.sorted()

    /** Precisions with both encoders and at least one decoder, most accurate first. */
    fun precisions(): List<String> = PRECISIONS.filter { p ->
        ENCODERS.all { entry(p, it) != null } && files.any { it.precision == p && it.subgraph == "decoder" }
    }

    /** Every listed file exists with its size (and, with [checkHashes], its sha256): a partial copy is refused. */
    fun checkFiles(folder: File, checkHashes: Boolean = true) {
        for (f in files) {
            val file = File(folder, f.path)
            if (!file.isFile) throw ManifestException("${f.path} is listed in the manifest but missing (re-run `mvos export`)")
            if (file.length() != f.bytes) {
                throw ManifestException("${f.path} has ${file.length()} bytes, the manifest says ${f.bytes} (a partial copy?)")
            }
            if (checkHashes && sha256(file) != f.sha256) {
                throw ManifestException("${f.path} does not match the sha256 in the manifest (a partial copy?)")
            }
        }
    }

    companion object {
        const val NAME = "manifest.json"
        const val FORMAT = "mobilevos-tflite"
        const val VERSION = 2L
        val SUBGRAPHS = listOf("key_encoder", "value_encoder", "decoder")
        val ENCODERS = SUBGRAPHS.take(2)
        val PRECISIONS = listOf("fp32", "fp16", "int8")

        fun graphKey(subgraph: String, queueLen: Int?): String = if (subgraph == "decoder") "decoder_T$queueLen" else subgraph

        fun graphPath(precision: String, subgraph: String, queueLen: Int?): String =
            "$precision/${graphKey(subgraph, queueLen)}.tflite"

        fun read(folder: File): Manifest {
            val file = File(folder, NAME)
            if (!file.isFile) throw ManifestException("$folder has no $NAME: not a folder written by `mvos export`")
            return parse(file.readText(), file.path)
        }

        fun parse(text: String, where: String = NAME): Manifest {
            val data = try {
                Json.parse(text)
            } catch (e: IllegalArgumentException) {
                throw ManifestException("cannot read $where: ${e.message}")
            }
            if (data !is Map<*, *> || data["format"] != FORMAT) throw ManifestException("$where is not a mobilevos TFLite manifest")
            if (data["format_version"] != VERSION) {
                throw ManifestException("$where has manifest format version ${data["format_version"]}; this app reads " +
                    "version $VERSION (re-export with `mvos export`)")
            }
            val normalisation = obj(data, "normalisation", where)
            val memory = obj(data, "memory", where)
            val manifest = Manifest(
                variant = str(data, "variant", where),
                inputSize = ints(data, "input_size", 2, where),
                featureSize = ints(data, "feature_size", 2, where),
                stride = int(data, "stride", where),
                keyDim = int(data, "key_dim", where),
                valueDim = int(data, "value_dim", where),
                maxObjects = int(data, "max_objects", where),
                topK = if (data["top_k"] == null) { require(data, "top_k", where); null } else int(data, "top_k", where),
                mean = floats(normalisation, "mean", where),
                std = floats(normalisation, "std", where),
                writeSlots = (memory["write_slots"] as? Map<*, *> ?: emptyMap<Any, Any>()).entries.associate { (t, slots) ->
                    t.toString().toInt() to (slots as List<*>).map { (it as Long?)?.toInt() }
                },
                memorisedFrames = (memory["memorised_frames"] as? Map<*, *> ?: emptyMap<Any, Any>()).entries.associate { (k, frames) ->
                    k.toString().toInt() to (frames as List<*>).map { (it as Long).toInt() }
                },
                // Exports from before the interval memorised every frame.
                memEvery = if (memory.containsKey("mem_every")) int(memory, "mem_every", where) else 1,
                queueLengthRange = ints(memory, "queue_length_range", 2, where),
                files = list(data, "files", where).map { graphFile(it, where) },
            )
            if (manifest.maxObjects < 1) throw ManifestException("$where: max_objects must be at least 1")
            if (manifest.memEvery < 1) throw ManifestException("$where: memory.mem_every must be at least 1")
            return manifest
        }

        private fun require(data: Map<*, *>, key: String, where: String): Any? {
            if (!data.containsKey(key)) throw ManifestException("$where: missing field '$key'")
            return data[key]
        }

        private fun str(data: Map<*, *>, key: String, where: String): String =
            require(data, key, where) as? String ?: throw ManifestException("$where: field '$key' has the wrong type")

        private fun int(data: Map<*, *>, key: String, where: String): Int =
            (require(data, key, where) as? Long)?.toInt() ?: throw ManifestException("$where: field '$key' has the wrong type")

        private fun obj(data: Map<*, *>, key: String, where: String): Map<*, *> =
            require(data, key, where) as? Map<*, *> ?: throw ManifestException("$where: field '$key' has the wrong type")

        private fun list(data: Map<*, *>, key: String, where: String): List<*> =
            require(data, key, where) as? List<*> ?: throw ManifestException("$where: field '$key' has the wrong type")

        private fun ints(data: Map<*, *>, key: String, length: Int, where: String): IntArray {
            val values = list(data, key, where)
            if (values.size != length || values.any { it !is Long || it <= 0 }) {
                throw ManifestException("$where: $key must be $length positive integers, got $values")
            }
            return values.map { (it as Long).toInt() }.toIntArray()
        }

        private fun floats(data: Map<*, *>, key: String, where: String): FloatArray {
            val values = data[key] as? List<*>
            if (values == null || values.size != 3 || values.any { it !is Number }) {
                throw ManifestException("$where: normalisation.$key must be three numbers")
            }
            return values.map { (it as Number).toFloat() }.toFloatArray()
        }

        private fun tensor(data: Any?, where: String): TensorSpec {
            val t = data as? Map<*, *> ?: throw ManifestException("$where: a tensor must be an object")
            val name = str(t, "name", where)
            val shape = (require(t, "shape", where) as? List<*>) ?: throw ManifestException("$where: tensor '$name' has no shape")
            if (shape.isEmpty() || shape.any { it !is Long || it <= 0 }) throw ManifestException("$where: tensor '$name' has shape $shape")
            return TensorSpec(name, shape.map { (it as Long).toInt() }.toIntArray(), str(t, "dtype", where),
                str(t, "meaning", where), t["signature_output"] as String?, (t["scale"] as Number?)?.toFloat(),
                (t["zero_point"] as Long?)?.toInt())
        }

        private fun graphFile(data: Any?, where: String): GraphFile {
            val f = data as? Map<*, *> ?: throw ManifestException("$where: every entry of files must be an object")
            val path = str(f, "path", where)
            val what = "$where: file '$path'"
            val subgraph = str(f, "subgraph", where)
            val precision = str(f, "precision", where)
            val queueLen = (f["queue_len"] as Long?)?.toInt()
            if (subgraph !in SUBGRAPHS) throw ManifestException("$what has unknown subgraph '$subgraph' (${SUBGRAPHS.joinToString()})")
            if (precision !in PRECISIONS) throw ManifestException("$what has unknown precision '$precision' (${PRECISIONS.joinToString()})")
            if (subgraph == "decoder" && (queueLen == null || queueLen !in 1..20)) {
                throw ManifestException("$what: queue_len must be in 1..20, got $queueLen")
            }
            if (subgraph != "decoder" && queueLen != null) throw ManifestException("$what: only decoders have a queue length")
            val expected = graphPath(precision, subgraph, queueLen)
            if (path != expected) throw ManifestException("$what should be at $expected")
            val inputs = (require(f, "inputs", where) as List<*>).map { tensor(it, what) }
            val outputs = (require(f, "outputs", where) as List<*>).map { tensor(it, what) }
            for (spec in inputs + outputs) {
                if (spec.dtype != "float32" && spec.dtype != "int8") {
                    throw ManifestException("$what: tensor '${spec.name}' has dtype '${spec.dtype}' (float32 or int8)")
                }
                if (spec.dtype == "int8" && (spec.scale == null || spec.scale <= 0f || spec.zeroPoint == null)) {
                    throw ManifestException("$what: int8 tensor '${spec.name}' needs a positive scale and an integer zero_point")
                }
            }
            return GraphFile(path, str(f, "sha256", where), (require(f, "bytes", where) as Long), precision, subgraph,
                queueLen, inputs, outputs, (f["signature"] as? String) ?: "serving_default")
        }

        private fun sha256(file: File): String {
            val digest = MessageDigest.getInstance("SHA-256")
            file.inputStream().use { stream ->
                val buffer = ByteArray(1 shl 20)
                while (true) {
                    val n = stream.read(buffer)
                    if (n < 0) break
                    digest.update(buffer, 0, n)
                }
            }
            return digest.digest().joinToString("") { "%02x".format(it) }
        }
    }
}
