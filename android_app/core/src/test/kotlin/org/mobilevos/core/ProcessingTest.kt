package org.mobilevos.core

import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertTrue

/** Pre- and post-processing against what the Python engine computed on the same real frames (1e-5). */
class ProcessingTest {
    private val m = Golden.manifest
    private val objectIds = (Golden.index["object_ids"] as List<*>).map { (it as Long).toInt() }

    private fun geometry(frame: Map<String, Any?>): Geometry {
        val (h, w) = Golden.shape(frame["camera"])
        return Geometry.forFrame(h, w, m.inputSize[0], m.inputSize[1])
    }

    @Test
    fun cameraFramesBecomeTheKeyEncodersInput() {
        val enlarged = Golden.run(Golden.ENLARGED).frames
        for (frame in Golden.frames + enlarged) {
            val g = geometry(frame)
            assertTrue(g.resizes && (g.resizedW < g.paddedW || g.resizedH < g.paddedH)) // resized and padded
            assertEquals(frame in enlarged, !g.shrinks) // both ways of resizing
            val prepared = Preprocess.frame(Golden.bytes(frame["camera"]), g, m.mean, m.std)
            val diff = Golden.maxDiff(prepared, Golden.floats(frame["prepared"]))
            assertTrue(diff <= 1e-5f, "prepared frame differs from Python by $diff")
        }
    }

    @Test
    fun decoderLogitsBecomeTheFramesProbabilitiesAndLabels() {
        val enlarged = Golden.run(Golden.ENLARGED)
        for ((run, t) in listOf(Golden.run("fp32") to 1, Golden.run("fp32") to 3, enlarged to 1)) {
            val frame = run.frames[t]
            val g = geometry(frame)
            val pixels = m.inputSize[0] * m.inputSize[1]
            val objectProbs = run.calls.filter { it["graph"] == "decoder" && (it["frame"] as Long).toInt() == t }
                .flatMap { call ->
                    val logits = Golden.floats((call["outputs"] as Map<*, *>)["logits"])
                    (0 until m.maxObjects).map { Postprocess.sigmoid(logits.copyOfRange(it * pixels, (it + 1) * pixels)) }
                }.take(objectIds.size).toTypedArray() // the last call's padded object is dropped
            val probs = Postprocess.restore(Postprocess.softAggregate(objectProbs), g)
            val expected = Golden.planes(frame["probs"])
            assertEquals(expected.size, probs.size)
            for (c in probs.indices) {
                val diff = Golden.maxDiff(probs[c], expected[c])
                assertTrue(diff <= 1e-5f, "frame $t channel $c differs from Python by $diff")
            }
            assertContentEquals(Golden.bytes(frame["labels"]), Postprocess.labels(probs, objectIds))
        }
    }

    @Test
    fun paletteMatchesDavis() {
        assertContentEquals(intArrayOf(128, 0, 0), Palette.rgb(1))
        assertContentEquals(intArrayOf(0, 128, 0), Palette.rgb(2))
        assertContentEquals(intArrayOf(128, 128, 0), Palette.rgb(3))
    }
}
