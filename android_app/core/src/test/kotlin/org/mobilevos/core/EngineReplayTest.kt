package org.mobilevos.core

import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertIs
import kotlin.test.assertTrue

/**
 * The Kotlin engine driven by the graph outputs the Python engine recorded, for the fp32 and the int8 graphs
 * (and fp32 on frames smaller than the export, which are enlarged on the way in):
 * every call must come in the same order with the same inputs (floats within 1e-5; int8 steps exactly, passed on
 * as the graph before made them), and the label maps, memory slots and memory contents must come out the same.
 */
class EngineReplayTest {
    private fun replay(precision: String, runName: String = precision) {
        val run = Golden.run(runName)
        var next = 0
        fun replaying(graph: String) = SubgraphRunner { inputs ->
            val call = run.calls[next++]
            val what = "$runName call ${next - 1} ($graph)"
            assertEquals(graph, call["graph"], what)
            val entry = Golden.manifest.entry(precision, graph, if (graph == "decoder") Golden.queueLen else null)!!
            val recorded = call["inputs"] as Map<*, *>
            assertEquals(recorded.keys, inputs.keys, "$what inputs")
            for ((name, value) in inputs) assertSame(recorded[name], value, "$what input $name")
            (call["outputs"] as Map<*, *>).entries.associate { (name, array) ->
                name as String to Golden.tensor(array, entry.outputs.first { it.name == name })
            }
        }

        val engine = Engine(Golden.manifest, Golden.queueLen, replaying("key_encoder"), replaying("value_encoder"),
            replaying("decoder"), memEvery = Golden.memEvery)
        for ((t, frame) in run.frames.withIndex()) {
            val (h, w) = Golden.shape(frame["camera"])
            val mask = frame["mask"]?.let { Golden.bytes(it) }
            val result = engine.step(Golden.bytes(frame["camera"]), h, w, mask)
            assertContentEquals(Golden.bytes(frame["labels"]), result.labels, "$precision labels of frame $t")
            val memory = engine.memory!!
            assertEquals((frame["frame_of_slot"] as List<*>).map { (it as Long).toInt() }, memory.frameOfSlot.toList())
            assertSame(frame["memory_keys"], memory.keys, "$precision memory keys after frame $t")
            assertSame(frame["memory_values"], memory.values, "$precision memory values after frame $t")
            val memorised = t % Golden.memEvery == 0 // the frames between run no value encoder
            assertEquals(setOf("key_encoder") + (if (memorised) setOf("value_encoder") else emptySet()) +
                (if (t > 0) setOf("decoder") else emptySet()), result.millis.keys)
        }
        assertEquals(run.calls.size, next, "every recorded $precision graph call was replayed")
        assertEquals(listOf(1, 2, 3), engine.objectIds)
    }

    /** int8 steps exactly and still int8; floats within 1e-5. */
    private fun assertSame(recorded: Any?, value: Tensor, what: String) {
        if (Golden.dtype(recorded) == "int8") {
            assertIs<Int8Tensor>(value, "$what: int8 steps must pass as they are")
            assertContentEquals(Golden.bytes(recorded), value.data, what)
        } else {
            assertIs<FloatTensor>(value, what)
            val diff = Golden.maxDiff(value.data, Golden.floats(recorded))
            assertTrue(diff <= 1e-5f, "$what differs from Python by $diff")
        }
    }

    @Test
    fun fp32LabelMapsAndMemoryMatchThePythonEngine() = replay("fp32")

    @Test
    fun int8FeaturesAndMemoryPassBetweenGraphsAsThePythonEngineDoes() = replay("int8")

    @Test
    fun enlargedFramesGiveThePythonEnginesLabelMapsAndMemory() = replay("fp32", Golden.ENLARGED)
}
