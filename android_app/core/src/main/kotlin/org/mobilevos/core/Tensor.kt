package org.mobilevos.core

/**
 * The values on one graph edge: floats, or the int8 steps of a full-integer graph with the quantisation they were
 * made in (real = scale * (q - zeroPoint)). Features and memory stay as their graph made them (an int8 export gives
 * every input another graph makes that graph's quantisation, `PRODUCERS` in mvos.runtime.manifest), so int8 passes
 * from graph to graph with no dequantise and quantise between them, as in the Python runtime.
 */
sealed interface Tensor {
    val size: Int

    /** A tensor of [size] of the same kind (zero steps for int8), for the memory and the decoder's object slots. */
    fun blank(size: Int): Tensor

    /** Copies elements [start, end) into [into] (of the same kind) at [at]. */
    fun copyInto(into: Tensor, at: Int, start: Int = 0, end: Int = size)

    /** The real values (dequantised for int8). */
    fun floats(): FloatArray
}

class FloatTensor(val data: FloatArray) : Tensor {
    override val size: Int get() = data.size

    override fun blank(size: Int): Tensor = FloatTensor(FloatArray(size))

    override fun copyInto(into: Tensor, at: Int, start: Int, end: Int) {
        data.copyInto((into as FloatTensor).data, at, start, end)
    }

    override fun floats(): FloatArray = data
}

class Int8Tensor(val data: ByteArray, val scale: Float, val zeroPoint: Int) : Tensor {
    override val size: Int get() = data.size

    override fun blank(size: Int): Tensor = Int8Tensor(ByteArray(size), scale, zeroPoint)

    override fun copyInto(into: Tensor, at: Int, start: Int, end: Int) {
        require(into is Int8Tensor && into.scale == scale && into.zeroPoint == zeroPoint) { "int8 steps of another quantisation" }
        data.copyInto(into.data, at, start, end)
    }

    override fun floats(): FloatArray = FloatArray(size).also { Quantization.dequantize(scale, zeroPoint, data, it) }

    fun sameQuantization(spec: TensorSpec): Boolean = spec.scale == scale && spec.zeroPoint == zeroPoint
}

/** int8 graph edges: real = scale * (q - zeroPoint), as `quantise` / `dequantise` in mvos.runtime.manifest. */
object Quantization {
    fun quantize(scale: Float, zeroPoint: Int, real: FloatArray, into: ByteArray) {
        for (i in real.indices) {
            into[i] = (Math.rint((real[i] / scale).toDouble()) + zeroPoint).coerceIn(-128.0, 127.0).toInt().toByte()
        }
    }

    fun dequantize(scale: Float, zeroPoint: Int, q: ByteArray, into: FloatArray) {
        for (i in q.indices) into[i] = (q[i] - zeroPoint) * scale
    }

    /**
     * The steps an int8 input of [spec] takes for [value]: steps of the input's own quantisation as they are (no
     * copy), floats quantised into [scratch], steps of another quantisation (an export whose graphs were
     * calibrated apart) dequantised and quantised again into [scratch].
     */
    fun toInput(value: Tensor, spec: TensorSpec, scratch: ByteArray): ByteArray {
        require(value.size == spec.size) { "input ${spec.name} has ${value.size} values, expected ${spec.size}" }
        if (value is Int8Tensor && value.sameQuantization(spec)) return value.data
        quantize(spec.scale!!, spec.zeroPoint!!, value.floats(), scratch)
        return scratch
    }
}
