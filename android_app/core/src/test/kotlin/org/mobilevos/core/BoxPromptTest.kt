package org.mobilevos.core

import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertNotNull
import kotlin.test.assertNull

/** The app's GrabCut set-up against `mvos segment --box` (mvos.runtime.boxes), from the golden index. */
class BoxPromptTest {
    private val golden = Golden.index["box_prompt"] as Map<*, *>

    private fun ints(value: Any?) = (value as List<*>).map { (it as Long).toInt() }

    private fun box(value: Any?) = ints(value).let { BoxPrompt.Box(it[0], it[1], it[2], it[3]) }

    @Test
    fun settingsAreThePythonOnes() {
        assertEquals((golden["iterations"] as Long).toInt(), BoxPrompt.ITERATIONS)
        assertEquals((golden["max_side"] as Long).toInt(), BoxPrompt.MAX_SIDE)
    }

    @Test
    fun grabcutRunsWherePythonRunsIt() {
        for (case in golden["cases"] as List<*>) {
            case as Map<*, *>
            val (h, w) = ints(case["frame_size"])
            val plan = BoxPrompt.plan(h, w, box(case["box"]))
            assertEquals(ints(case["size"]), listOf(plan.height, plan.width), "size for $case")
            assertEquals(ints(case["rect"]), listOf(plan.x, plan.y, plan.w, plan.h), "rectangle for $case")
        }
    }

    @Test
    fun smallerBoxesWinWhereObjectsOverlap() {
        val boxes = (golden["boxes"] as List<*>).map { box(it) }
        assertEquals(ints(golden["paint_order"]), BoxPrompt.paintOrder(boxes))
        val everywhere = List(boxes.size) { ByteArray(4) { 1 } }
        val ids = BoxPrompt.combine(everywhere, boxes, 4)
        assertContentEquals(ByteArray(4) { 2 }, ids) // box 1 (index 1) is the smallest
    }

    @Test
    fun dragsBecomeBoxesAndBadBoxesAreNamed() {
        assertEquals(BoxPrompt.Box(10, 20, 31, 40), BoxPrompt.Box.spanning(30.2f, 40f, 10.7f, 20f, 100, 100))
        assertEquals(BoxPrompt.Box(0, 0, 100, 50), BoxPrompt.Box.spanning(-5f, -5f, 150f, 60f, 50, 100))
        assertNull(BoxPrompt.problem(BoxPrompt.Box(0, 0, 4, 4), 10, 10))
        assertNotNull(BoxPrompt.problem(BoxPrompt.Box(0, 0, 3, 8), 10, 10))
        assertNotNull(BoxPrompt.problem(BoxPrompt.Box(0, 0, 11, 8), 10, 10))
        assertNotNull(BoxPrompt.problem(BoxPrompt.Box(5, 5, 5, 8), 10, 10))
    }
}
