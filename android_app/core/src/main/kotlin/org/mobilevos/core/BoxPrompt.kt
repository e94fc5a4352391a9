package org.mobilevos.core

import kotlin.math.max
import kotlin.math.min

/**
 * First-frame masks from boxes the user drags: OpenCV's GrabCut inside each box, as `mvos segment --box`
 * (mvos.runtime.boxes). Everything but the OpenCV call lives here, checked against Python by the golden tests.
 */
object BoxPrompt {
    const val ITERATIONS = 5 // GrabCut iterations (GRABCUT_ITERATIONS)
    const val MAX_SIDE = 960 // GrabCut runs on frames at most this large: its cost grows with the pixels
    const val MIN_SIDE = 4

    /** Pixels of the frame, x1/y1 exclusive. */
    data class Box(val x0: Int, val y0: Int, val x1: Int, val y1: Int) {
        val area: Int get() = (x1 - x0) * (y1 - y0)

        companion object {
            /** The box spanned by two corners of a drag, in any direction, clipped to the frame. */
            fun spanning(ax: Float, ay: Float, bx: Float, by: Float, height: Int, width: Int) = Box(
                min(ax, bx).toInt().coerceIn(0, width), min(ay, by).toInt().coerceIn(0, height),
                Math.ceil(max(ax, bx).toDouble()).toInt().coerceIn(0, width),
                Math.ceil(max(ay, by).toDouble()).toInt().coerceIn(0, height),
            )
        }
    }

    /** Where GrabCut runs: the frame shrunk to [height] x [width], the rectangle x, y, w, h there. */
    data class Plan(val height: Int, val width: Int, val x: Int, val y: Int, val w: Int, val h: Int)

    /** Why a box cannot be segmented, or null when it can. */
    fun problem(box: Box, height: Int, width: Int): String? = when {
        box.x1 < box.x0 || box.y1 < box.y0 -> "the box is reversed"
        box.x1 == box.x0 || box.y1 == box.y0 -> "the box is empty"
        box.x0 < 0 || box.y0 < 0 || box.x1 > width || box.y1 > height -> "the box is outside the ${width}x$height frame"
        box.x1 - box.x0 < MIN_SIDE || box.y1 - box.y0 < MIN_SIDE -> "the box is too small to segment"
        else -> null
    }

    /** `grabcut_geometry`: Python's round() is half-to-even, as Math.rint. */
    fun plan(height: Int, width: Int, box: Box): Plan {
        val scale = min(1.0, MAX_SIDE.toDouble() / max(height, width))
        fun r(v: Int) = Math.rint(v * scale).toInt()
        val (h, w) = if (scale == 1.0) height to width else r(height) to r(width)
        val x0 = r(box.x0)
        val y0 = r(box.y0)
        return Plan(h, w, x0, y0, max(1, r(box.x1) - x0), max(1, r(box.y1) - y0))
    }

    /** Indices of [boxes], largest first: later (smaller) boxes win where objects overlap (`paint_order`). */
    fun paintOrder(boxes: List<Box>): List<Int> = boxes.indices.sortedByDescending { boxes[it].area }

    /** Object ids at the frame's size from each box's 0/1 foreground (box i becomes object i+1). */
    fun combine(foregrounds: List<ByteArray>, boxes: List<Box>, pixels: Int): ByteArray {
        require(foregrounds.size == boxes.size) { "one foreground per box" }
        val ids = ByteArray(pixels)
        for (index in paintOrder(boxes)) {
            val found = foregrounds[index]
            require(found.size == pixels) { "foreground $index is not the frame's size" }
            for (p in 0 until pixels) if (found[p].toInt() != 0) ids[p] = (index + 1).toByte()
        }
        return ids
    }
}
