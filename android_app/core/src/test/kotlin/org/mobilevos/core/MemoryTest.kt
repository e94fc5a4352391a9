package org.mobilevos.core

import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertIs
import kotlin.test.assertTrue

private fun floats(vararg values: Float) = FloatTensor(values)

class MemoryTest {
    @Test
    fun slotsFollowTheProtocol() {
        assertEquals(listOf(1, 2, 1, 2, 1), (0 until 5).map { MemoryProtocol.writeSlot(it, 3) })
        assertEquals(null, MemoryProtocol.writeSlot(4, 1))
        assertContentEquals(intArrayOf(0, 3, 2), MemoryProtocol.slotFrames(3, 3))
    }

    @Test
    fun theReferenceFillsEverySlotThenTheRingTurns() {
        val memory = FixedQueueMemory(3, keySize = 2, valueSize = 1)
        for (frame in 0 until 6) {
            memory.write(floats(frame.toFloat(), -frame.toFloat()), floats(frame * 10f), frame)
            assertContentEquals(MemoryProtocol.slotFrames(frame, 3), memory.frameOfSlot)
        }
        assertContentEquals(floatArrayOf(0f, -0f, 5f, -5f, 4f, -4f), memory.keys.floats())
        assertContentEquals(floatArrayOf(0f, 50f, 40f), memory.values.floats())
    }

    @Test
    fun anInt8MemoryKeepsTheStepsItIsGiven() {
        val memory = FixedQueueMemory(2, keySize = 2, valueSize = 1)
        memory.write(Int8Tensor(byteArrayOf(-128, 127), 0.5f, 3), Int8Tensor(byteArrayOf(7), 0.1f, -2), 0)
        memory.write(Int8Tensor(byteArrayOf(1, 2), 0.5f, 3), Int8Tensor(byteArrayOf(-7), 0.1f, -2), 1)
        val keys = assertIs<Int8Tensor>(memory.keys)
        assertContentEquals(byteArrayOf(-128, 127, 1, 2), keys.data)
        assertEquals(0.5f to 3, keys.scale to keys.zeroPoint)
        assertContentEquals(byteArrayOf(7, -7), assertIs<Int8Tensor>(memory.values).data)
        // steps of another quantisation cannot be stored as if they were these
        assertFailsWith<IllegalArgumentException> { memory.write(Int8Tensor(byteArrayOf(1, 2), 0.25f, 3), Int8Tensor(byteArrayOf(0), 0.1f, -2), 2) }
    }

    @Test
    fun queueLengthOneKeepsOnlyTheReference() {
        val memory = FixedQueueMemory(1, 1, 1)
        memory.write(floats(1f), floats(1f), 0)
        assertFalse(memory.wants(1))
        memory.write(floats(2f), floats(2f), 1)
        assertContentEquals(intArrayOf(0), memory.frameOfSlot)
        assertFailsWith<IllegalArgumentException> { FixedQueueMemory(21, 1, 1) }
    }

    @Test
    fun everyKthFrameAfterTheReferenceIsMemorised() {
        assertEquals(listOf(3, 8, 13), (3 until 15).filter { MemoryProtocol.memorised(it, 3, 5) })
        val memory = FixedQueueMemory(2, 1, 1, every = 3)
        assertTrue(memory.wants(2))
        memory.write(floats(1f), floats(1f), 2)
        assertEquals(listOf(5, 8), (3 until 10).filter { memory.wants(it) })
        assertFailsWith<IllegalArgumentException> { FixedQueueMemory(2, 1, 1, every = 0) }
    }

    @Test
    fun othersIsTheClampedSumOfTheOtherObjects() {
        val others = MemoryProtocol.others(arrayOf(floatArrayOf(0.7f), floatArrayOf(0.6f), floatArrayOf(0.1f)))
        assertEquals(listOf(0.7f, 0.8f, 1f), others.map { it[0] }.map { Math.round(it * 1e5f) / 1e5f })
    }
}
