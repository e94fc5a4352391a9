package org.mobilevos.core

import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertIs
import kotlin.test.assertTrue

/**
 * The Kotlin engine driven by the graph outputs the Python engine recorded, for the fp32 and the int8 graphs
 * (and fp32 on frames smaller than the export, which are enlarged on the way in, and int8 with the memorised
 * frames encoded by the fp32 encoders):
 * every call must come in the same order with the same inputs (floats within 1e-5; int8 steps exactly, passed on
 * as the graph before made them), and the label maps, memory slots and memory contents must come out the same.
 */
class EngineReplayTest {
    private fun replay(precision: String, runName: String = precision, memoryEncoders: Boolean = false) {
        val run = Golden.run(runName)
        var next = 0
        fun replaying(graph: String) = SubgraphRunner { inputs ->
            val call = run.calls[next++]
            val what = "$runName call ${next - 1} ($graph)"
            assertEquals(graph, call["graph"], what)
            val made = call["precision"] as String? ?: precision // the memory's encoders name theirs
            val entry = Golden.manifest.entry(made, graph, if (graph == "decoder") Golden.queueLen else null)!!
            val recorded = call["inputs"] as Map<*, *>
            assertEquals(recorded.keys, inputs.keys, "$what inputs")
            for ((name, value) in inputs) assertSame(recorded[name], value, "$what input $name")
            (call["outputs"] as Map<*, *>).entries.associate { (name, array) ->
                name as String to Golden.tensor(array, entry.outputs.first { it.name == name })
            }
        }

        val memory = if (memoryEncoders) {
            MemoryEncoders(Golden.manifest, precision, replaying("key_encoder"), replaying("value_encoder"))
        } else null
        val engine = Engine(Golden.manifest, Golden.queueLen, replaying("key_encoder"), replaying("value_encoder"),
            replaying("decoder"), memEvery = Golden.memEvery, memoryEncoders = memory)
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
            // the memory's encoders are timed under their own names: they are graphs of another precision
            val encoders = if (memorised) listOf("key_encoder", "value_encoder") else listOf("key_encoder")
            assertEquals(encoders.map { if (memorised && memoryEncoders) MemoryEncoders.timing(it) else it }.toSet() +
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

    /** The memorised frames (0, 2, 4) go through the fp32 encoders, their outputs onto the int8 graphs' grids;
     *  frames 1 and 3 through the int8 key encoder. */
    @Test
    fun int8WithAnFp32MemoryEncodesTheMemorisedFramesAsThePythonEngineDoes() {
        replay("int8", Golden.FP32_MEMORY, memoryEncoders = true)
        val made = Golden.run(Golden.FP32_MEMORY).calls.filter { it["graph"] != "decoder" }
            .map { (it["frame"] as Long).toInt() to (it["precision"] ?: "int8") }
        assertEquals(setOf(0 to "fp32", 1 to "int8", 2 to "fp32", 3 to "int8", 4 to "fp32"), made.toSet())
    }
}
