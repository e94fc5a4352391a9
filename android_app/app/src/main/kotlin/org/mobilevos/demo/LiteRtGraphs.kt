package org.mobilevos.demo

import android.util.Log
import org.mobilevos.core.FloatTensor
import org.mobilevos.core.GraphFile
import org.mobilevos.core.Int8Tensor
import org.mobilevos.core.Manifest
import org.mobilevos.core.Quantization
import org.mobilevos.core.SubgraphRunner
import org.mobilevos.core.Tensor
import org.tensorflow.lite.Delegate
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.gpu.CompatibilityList
import org.tensorflow.lite.gpu.GpuDelegate
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * The three graphs of one precision on LiteRT: the GPU delegate where the device supports it, else (or when the
 * delegate refuses a graph) the CPU with XNNPACK. Create, run and close on one thread: the GPU delegate is bound
 * to the thread that made it.
 */
class LiteRtGraphs(
    private val folder: File,
    val manifest: Manifest,
    val precision: String,
    queueLen: Int,
    wantGpu: Boolean,
    val threads: Int,
    subgraphs: List<String> = Manifest.SUBGRAPHS, // the encoders only, for a memory precision's (MemoryEncoders)
) : AutoCloseable {
    private val delegates = ArrayList<Delegate>()
    private val runners = LinkedHashMap<String, Runner>()

    /** "gpu" when every graph runs on the GPU delegate, else "cpu" (the benchmark CSV's delegate column). */
    val delegate: String

    init {
        val gpuOptions = if (wantGpu) CompatibilityList().let { if (it.isDelegateSupportedOnThisDevice) it.bestOptionsForThisDevice else null } else null
        var allGpu = gpuOptions != null
        for (subgraph in subgraphs) {
            val entry = manifest.entry(precision, subgraph, if (subgraph == "decoder") queueLen else null)
                ?: throw IllegalArgumentException("the export has no $precision $subgraph for T=$queueLen (see the manifest)")
            val file = File(folder, entry.path)
            val interpreter = gpuOptions?.let { options ->
                try {
                    val gpu = GpuDelegate(options)
                    delegates.add(gpu)
                    Interpreter(file, Interpreter.Options().addDelegate(gpu))
                } catch (e: Exception) { // an op the delegate cannot take: this graph runs on the CPU
                    Log.w(TAG, "GPU delegate refused ${entry.path}: ${e.message}; using the CPU")
                    allGpu = false
                    null
                }
            } ?: Interpreter(file, Interpreter.Options().setUseXNNPACK(true).setNumThreads(threads))
            runners[subgraph] = Runner(interpreter, entry)
        }
        delegate = if (allGpu) "gpu" else "cpu"
    }

    fun runner(subgraph: String): SubgraphRunner = runners.getValue(subgraph)

    override fun close() {
        runners.values.forEach { it.interpreter.close() }
        delegates.forEach { it.close() }
    }

    /**
     * Tensors in and out by the manifest's names. An int8 output comes back as its steps (the next graph takes
     * them as they are); an int8 input takes steps or floats ([Quantization.toInput]). Buffers are made once.
     */
    private class Runner(val interpreter: Interpreter, private val entry: GraphFile) : SubgraphRunner {
        private val inputs = entry.inputs.associate { it.name to buffer(it.size, it.dtype) }
        private val outputs = entry.outputs.associate { (it.signatureOutput ?: it.name) to buffer(it.size, it.dtype) }
        private val results: Map<String, Tensor> = entry.outputs.associate { // reused every call
            it.name to if (it.dtype == "int8") Int8Tensor(ByteArray(it.size), it.scale!!, it.zeroPoint!!)
            else FloatTensor(FloatArray(it.size))
        }
        private val scratch = entry.inputs.filter { it.dtype == "int8" }.associate { it.name to ByteArray(it.size) }

        override fun run(inputs: Map<String, Tensor>): Map<String, Tensor> {
            for (spec in entry.inputs) {
                val value = inputs.getValue(spec.name)
                require(value.size == spec.size) { "${entry.path}: input ${spec.name} has ${value.size} values, expected ${spec.size}" }
                val target = this.inputs.getValue(spec.name).apply { rewind() }
                if (spec.dtype == "int8") {
                    target.put(Quantization.toInput(value, spec, scratch.getValue(spec.name)))
                } else {
                    target.asFloatBuffer().put(value.floats())
                }
                target.rewind()
            }
            outputs.values.forEach { it.rewind() }
            interpreter.runSignature(this.inputs, outputs, entry.signature)
            for (spec in entry.outputs) {
                val source = outputs.getValue(spec.signatureOutput ?: spec.name).apply { rewind() }
                when (val result = results.getValue(spec.name)) {
                    is Int8Tensor -> source.get(result.data)
                    is FloatTensor -> source.asFloatBuffer().get(result.data)
                }
            }
            return results
        }

        private companion object {
            fun buffer(size: Int, dtype: String): ByteBuffer =
                ByteBuffer.allocateDirect(size * if (dtype == "int8") 1 else 4).order(ByteOrder.nativeOrder())
        }
    }

    private companion object {
        const val TAG = "mvos"
    }
}
