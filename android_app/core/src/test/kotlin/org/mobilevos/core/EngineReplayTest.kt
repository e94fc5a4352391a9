package org.mobilevos.core

import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertTrue

/**
 * The Kotlin engine driven by the graph outputs the Python engine recorded: every call must come in the same
 * order with the same inputs (1e-5), and the label maps, memory slots and memory contents must come out the same.
 */
class EngineReplayTest {
    private var next = 0

    private fun replaying(graph: String) = SubgraphRunner { inputs ->
        val call = Golden.calls[next++]
        assertEquals(graph, call["graph"], "call ${next - 1}")
        val recorded = call["inputs"] as Map<*, *>
        assertEquals(recorded.keys, inputs.keys, "call ${next - 1} ($graph) inputs")
        for ((name, value) in inputs) {
            val diff = Golden.maxDiff(value, Golden.floats(recorded[name]))
            assertTrue(diff <= 1e-5f, "call ${next - 1} ($graph) input $name differs from Python by $diff")
        }
        (call["outputs"] as Map<*, *>).entries.associate { (name, entry) -> name as String to Golden.floats(entry) }
    }

    @Test
    fun labelMapsAndMemoryMatchThePythonEngine() {
        val engine = Engine(Golden.manifest, Golden.queueLen, replaying("key_encoder"), replaying("value_encoder"),
            replaying("decoder"), memEvery = Golden.memEvery)
        for ((t, frame) in Golden.frames.withIndex()) {
            val (h, w) = Golden.shape(frame["camera"])
            val mask = frame["mask"]?.let { Golden.bytes(it) }
            val result = engine.step(Golden.bytes(frame["camera"]), h, w, mask)
            assertContentEquals(Golden.bytes(frame["labels"]), result.labels, "labels of frame $t")
            val memory = engine.memory!!
            assertEquals((frame["frame_of_slot"] as List<*>).map { (it as Long).toInt() }, memory.frameOfSlot.toList())
            assertTrue(Golden.maxDiff(memory.keys, Golden.floats(frame["memory_keys"])) <= 1e-5f)
            assertTrue(Golden.maxDiff(memory.values, Golden.floats(frame["memory_values"])) <= 1e-5f)
            val memorised = t % Golden.memEvery == 0 // the frames between run no value encoder
            assertEquals(setOf("key_encoder") + (if (memorised) setOf("value_encoder") else emptySet()) +
                (if (t > 0) setOf("decoder") else emptySet()), result.millis.keys)
        }
        assertEquals(Golden.calls.size, next, "every recorded graph call was replayed")
        assertEquals(listOf(1, 2, 3), engine.objectIds)
    }
}
