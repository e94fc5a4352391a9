package org.mobilevos.core

/**
 * The memory protocol of `mvos.runtime.memory`, which the export's manifest documents (and its worked
 * `write_slots` and `memorised_frames`, which the tests check against): slot 0 holds the frame where the objects
 * were given for the whole video; every mem_every-th frame after it is memorised and overwrites slot
 * 1 + (writes % (T-1)); the frames between only read; T=1 never writes again.
 */
object MemoryProtocol {
    const val MIN_QUEUE_LEN = 1
    const val MAX_QUEUE_LEN = 20

    fun checkQueueLen(queueLen: Int): Int {
        require(queueLen in MIN_QUEUE_LEN..MAX_QUEUE_LEN) { "queue length must be in $MIN_QUEUE_LEN..$MAX_QUEUE_LEN, got $queueLen" }
        return queueLen
    }

    fun checkMemEvery(every: Int): Int {
        require(every >= 1) { "memory interval (mem_every) must be at least 1, got $every" }
        return every
    }

    /** Whether a frame is memorised: the reference (where the objects were given) and every [every]-th after it. */
    fun memorised(frameIndex: Int, referenceIndex: Int, every: Int): Boolean = (frameIndex - referenceIndex) % every == 0

    /** The slot the frame memorised after [writes] earlier ones (the reference excluded) overwrites; null for T=1. */
    fun writeSlot(writes: Int, queueLen: Int): Int? = if (queueLen == 1) null else 1 + writes % (queueLen - 1)

    /** What each slot holds after the reference and [writes] later frames: 0 for the reference, k for the k-th. */
    fun slotFrames(writes: Int, queueLen: Int): IntArray {
        val slots = IntArray(queueLen)
        for (k in 0 until writes) writeSlot(k, queueLen)?.let { slots[it] = k + 1 }
        return slots
    }

    /** The value encoder's "others" per object: the sum of the other objects' probabilities, clamped to 0..1. */
    fun others(probs: Array<FloatArray>): Array<FloatArray> {
        val n = probs.size
        if (n == 0) return emptyArray()
        val total = FloatArray(probs[0].size)
        for (p in probs) for (i in total.indices) total[i] += p[i]
        return Array(n) { o -> FloatArray(total.size) { i -> (total[i] - probs[o][i]).coerceIn(0f, 1f) } }
    }
}

/**
 * T fixed slots for one group of objects, in the layouts the decoder graph takes: keys slot-major and channels
 * first (T, Ck, h, w); values slot-major and position-major (T, h, w, n*Cv), object i on channels i*Cv until
 * (i+1)*Cv. Floats or int8 steps, as the graphs make them (an int8 memory is a quarter of the bytes): allocated at
 * the first write, in the kind written; written in place after it.
 */
class FixedQueueMemory(val queueLen: Int, val keySize: Int, val valueSize: Int, val every: Int = 1) {
    private var keySlots: Tensor? = null
    private var valueSlots: Tensor? = null
    val keys: Tensor get() = checkNotNull(keySlots) { "the memory is empty" }
    val values: Tensor get() = checkNotNull(valueSlots) { "the memory is empty" }
    val frameOfSlot = IntArray(queueLen)
    var writes = 0
        private set
    val empty: Boolean get() = keySlots == null

    init {
        MemoryProtocol.checkQueueLen(queueLen)
        MemoryProtocol.checkMemEvery(every)
    }

    /** Whether [frameIndex] is memorised (T=1 needs nothing after the reference, which slot 0 holds). */
    fun wants(frameIndex: Int): Boolean =
        empty || (queueLen > 1 && MemoryProtocol.memorised(frameIndex, frameOfSlot[0], every))

    fun write(key: Tensor, value: Tensor, frameIndex: Int) {
        require(key.size == keySize && value.size == valueSize) { "memory write of the wrong size" }
        if (empty) { // the reference fills every slot: unwritten slots repeat it (what the PyTorch engine does)
            keySlots = key.blank(queueLen * keySize)
            valueSlots = value.blank(queueLen * valueSize)
            for (slot in 0 until queueLen) put(slot, key, value, frameIndex)
            return
        }
        val slot = MemoryProtocol.writeSlot(writes, queueLen) ?: return
        put(slot, key, value, frameIndex)
        writes++
    }

    private fun put(slot: Int, key: Tensor, value: Tensor, frameIndex: Int) {
        key.copyInto(keys, slot * keySize)
        value.copyInto(values, slot * valueSize)
        frameOfSlot[slot] = frameIndex
    }
}
