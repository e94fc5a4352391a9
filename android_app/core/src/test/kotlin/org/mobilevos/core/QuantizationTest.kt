package org.mobilevos.core

import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertSame

/** int8 edges as mvos.runtime.manifest's `quantise` / `dequantise` compute them. */
class QuantizationTest {
    private fun spec(scale: Float, zeroPoint: Int, size: Int) =
        TensorSpec("x", intArrayOf(size), "int8", "", null, scale, zeroPoint)

    @Test
    fun stepsRoundHalfToEvenThenShiftAndClip() {
        val q = ByteArray(7)
        // x / 0.5 = 1.25, 2.5, 3.5, -2.5, 1000, -1000, 0 ; rint (half to even) before the zero point is added
        Quantization.quantize(0.5f, 3, floatArrayOf(0.625f, 1.25f, 1.75f, -1.25f, 500f, -500f, 0f), q)
        assertContentEquals(byteArrayOf(4, 5, 7, 1, 127, -128, 3), q)
        val real = FloatArray(3)
        Quantization.dequantize(0.5f, 3, byteArrayOf(-128, 3, 127), real)
        assertContentEquals(floatArrayOf(-65.5f, 0f, 62f), real)
    }

    @Test
    fun anInputTakesStepsOfItsOwnQuantisationAsTheyAreAndMapsTheRest() {
        val input = spec(0.5f, 3, 4)
        val scratch = ByteArray(4)
        val own = byteArrayOf(-128, -1, 0, 127)
        assertSame(own, Quantization.toInput(Int8Tensor(own, 0.5f, 3), input, scratch)) // as they are, no copy
        assertContentEquals(own, Quantization.toInput(Int8Tensor(own, 0.5f, 3), input, scratch))
        // real -31.75, 0, 0.25, 32
        assertContentEquals(byteArrayOf(-61, 3, 3, 67), Quantization.toInput(Int8Tensor(own, 0.25f, -1), input, scratch))
        assertContentEquals(byteArrayOf(-61, 3, 3, 67),
            Quantization.toInput(FloatTensor(floatArrayOf(-31.75f, 0f, 0.25f, 32f)), input, scratch))
    }
}
