package org.mobilevos.core

/**
 * One exported graph as the engine sees it: tensors by name in, tensors by name out, each output as the graph
 * gives it (an int8 output as its steps, see [Tensor]). The app runs LiteRT behind this; the tests replay outputs
 * the Python engine recorded.
 */
fun interface SubgraphRunner {
    fun run(inputs: Map<String, Tensor>): Map<String, Tensor>
}

class FrameResult(
    val probs: Array<FloatArray>, // 1+N maps at the camera's size: background, then the objects in [objectIds] order
    val labels: ByteArray, // object ids at the camera's size
    val millis: Map<String, Double>, // time in each graph this frame (the value encoder summed over objects)
)

/**
 * The per-frame engine of `mvos.runtime.inference.Segmenter` for the objects given on one frame: pre-processing,
 * the three graphs, the fixed-queue memory and soft aggregation, step for step as the Python engine.
 */
class Engine(
    val manifest: Manifest,
    val queueLen: Int,
    private val keyEncoder: SubgraphRunner,
    private val valueEncoder: SubgraphRunner,
    private val decoder: SubgraphRunner,
    val memEvery: Int = manifest.memEvery, // memorise every k-th frame (the interval the weights were validated with)
    private val memoryEncoders: MemoryEncoders? = null, // more exact encoders for the frames the memory keeps
) {
    private val h = manifest.featureSize[0]
    private val w = manifest.featureSize[1]
    private val keySize = manifest.keyDim * h * w
    private val valueSize = h * w * manifest.valueDim
    var objectIds: List<Int> = emptyList()
        private set
    var memory: FixedQueueMemory? = null
        private set
    var frameIndex = 0
        private set

    init {
        MemoryProtocol.checkQueueLen(queueLen)
        MemoryProtocol.checkMemEvery(memEvery)
    }

    fun reset() {
        objectIds = emptyList()
        memory = null
        frameIndex = 0
    }

    /** [rgb]: H x W x 3 bytes. [mask]: H x W object ids, on the frame the objects are given (first step only). */
    fun step(rgb: ByteArray, height: Int, width: Int, mask: ByteArray? = null): FrameResult {
        require(rgb.size == height * width * 3) { "frame $frameIndex: expected ${height}x${width}x3 RGB bytes" }
        val millis = LinkedHashMap<String, Double>()
        val g = Geometry.forFrame(height, width, manifest.inputSize[0], manifest.inputSize[1])
        val frame = FloatTensor(Preprocess.frame(rgb, g, manifest.mean, manifest.std))
        // Known before the frame is decoded, as in the Python engine: a given mask starts the memory, else its
        // interval decides.
        val memorise = mask != null || memory?.wants(frameIndex) == true
        val features = if (memorise && memoryEncoders != null) {
            timed(millis, MemoryEncoders.timing("key_encoder")) { memoryEncoders.keyEncoder.run(mapOf("frame" to frame)) }
        } else {
            timed(millis, "key_encoder") { keyEncoder.run(mapOf("frame" to frame)) }
        }

        var objectProbs = predict(features, millis)
        if (mask != null) {
            require(mask.size == height * width) { "frame $frameIndex: the mask is not ${height}x${width}" }
            require(memory == null) { "objects are given once (reset to start again)" }
            val ids = mask.map { it.toInt() and 0xFF }.filter { it != 0 }.distinct().sorted()
            require(ids.isNotEmpty()) { "frame $frameIndex: the mask marks no object" }
            objectIds = ids
            objectProbs = Preprocess.given(mask, ids, g)
            memory = FixedQueueMemory(queueLen, keySize, valueSize * ids.size, memEvery)
        }
        require(objectIds.isNotEmpty()) { "frame $frameIndex: no objects to track yet (give a mask)" }
        val probs = Postprocess.softAggregate(objectProbs)
        memorise(features, probs.copyOfRange(1, probs.size), millis)
        frameIndex++
        val restored = Postprocess.restore(probs, g)
        return FrameResult(restored, Postprocess.labels(restored, objectIds), millis)
    }

    private fun predict(features: Map<String, Tensor>, millis: MutableMap<String, Double>): Array<FloatArray> {
        val memory = memory ?: return emptyArray()
        val n = objectIds.size
        val maxObjects = manifest.maxObjects
        val cv = manifest.valueDim
        val pixels = manifest.inputSize[0] * manifest.inputSize[1]
        val out = ArrayList<FloatArray>()
        var start = 0
        while (start < n) { // the graph takes exactly maxObjects: fewer are zero-padded, more run in chunks
            val count = minOf(maxObjects, n - start)
            val values = memory.values.blank(queueLen * h * w * maxObjects * cv) // padding: dropped outputs
            for (slot in 0 until queueLen) for (p in 0 until h * w) {
                memory.values.copyInto(values, ((slot * h * w + p) * maxObjects) * cv,
                    ((slot * h * w + p) * n + start) * cv, ((slot * h * w + p) * n + start + count) * cv)
            }
            val logits = timed(millis, "decoder") {
                decoder.run(mapOf("key" to features.getValue("key"), "value" to features.getValue("value"),
                    "f8" to features.getValue("f8"), "f4" to features.getValue("f4"),
                    "mem_keys" to memory.keys, "mem_values" to values))
            }.getValue("logits").floats() // maxObjects x H x W x 1
            for (o in 0 until count) out.add(Postprocess.sigmoid(logits.copyOfRange(o * pixels, (o + 1) * pixels)))
            start += count
        }
        return out.toTypedArray()
    }

    private fun memorise(features: Map<String, Tensor>, objectProbs: Array<FloatArray>,
                         millis: MutableMap<String, Double>) {
        val memory = memory ?: return
        if (!memory.wants(frameIndex)) return
        val others = MemoryProtocol.others(objectProbs)
        val n = objectProbs.size
        val cv = manifest.valueDim
        var stacked: Tensor? = null // h x w x n*Cv: object o on channels o*Cv..(o+1)*Cv
        val values = memoryEncoders?.valueEncoder ?: valueEncoder // only memorised frames get here
        val timing = if (memoryEncoders != null) MemoryEncoders.timing("value_encoder") else "value_encoder"
        for (o in 0 until n) {
            val value = timed(millis, timing) {
                values.run(mapOf("f16" to features.getValue("f16"), "mask" to FloatTensor(objectProbs[o]),
                    "others" to FloatTensor(others[o])))
            }.getValue("value")
            val into = stacked ?: value.blank(valueSize * n).also { stacked = it }
            for (p in 0 until h * w) value.copyInto(into, (p * n + o) * cv, p * cv, (p + 1) * cv)
        }
        memory.write(features.getValue("key"), stacked!!, frameIndex)
    }

    private inline fun <T> timed(millis: MutableMap<String, Double>, name: String, block: () -> T): T {
        val start = System.nanoTime()
        val result = block()
        millis[name] = (millis[name] ?: 0.0) + (System.nanoTime() - start) / 1e6
        return result
    }
}

/**
 * Encoders of a more exact precision for the frames the memory keeps (`memory_precision` in
 * mvos.runtime.settings; `MemoryEncoders` in mvos.runtime.tflite): every later frame reads the memory, so int8
 * reading a memory the fp32 encoders made follows fp32 far more closely. Their outputs go onto the grids of the
 * engine's own ([precision]) encoders' int8 outputs, so the memory and the decoder get the same kind of tensor on
 * every frame; f16 stays float, for the memory value encoder.
 */
class MemoryEncoders(manifest: Manifest, precision: String, keyEncoder: SubgraphRunner, valueEncoder: SubgraphRunner) {
    private val keyGrids = int8Outputs(manifest, precision, "key_encoder") - "f16"
    private val valueGrids = int8Outputs(manifest, precision, "value_encoder")

    val keyEncoder = SubgraphRunner { inputs -> onGrids(keyEncoder.run(inputs), keyGrids) }
    val valueEncoder = SubgraphRunner { inputs -> onGrids(valueEncoder.run(inputs), valueGrids) }

    private fun onGrids(outputs: Map<String, Tensor>, grids: Map<String, TensorSpec>): Map<String, Tensor> =
        outputs.mapValues { (name, value) ->
            val grid = grids[name] ?: return@mapValues value
            val steps = ByteArray(value.size)
            Quantization.quantize(grid.scale!!, grid.zeroPoint!!, value.floats(), steps)
            Int8Tensor(steps, grid.scale, grid.zeroPoint)
        }

    companion object {
        /** The name [FrameResult.millis] gives this encoder's time when it ran as the memory's: it is a graph of
         * the memory precision, not the engine's own. */
        fun timing(subgraph: String) = TIMING_PREFIX + subgraph

        /** The graph a [FrameResult.millis] name timed, and whether it ran as the memory's encoder. */
        fun timedGraph(name: String): Pair<String, Boolean> =
            if (name.startsWith(TIMING_PREFIX)) name.removePrefix(TIMING_PREFIX) to true else name to false

        private const val TIMING_PREFIX = "memory_"

        private fun int8Outputs(manifest: Manifest, precision: String, subgraph: String): Map<String, TensorSpec> =
            manifest.entry(precision, subgraph)!!.outputs.filter { it.dtype == "int8" }.associateBy { it.name }
    }
}
