package org.mobilevos.demo

import android.content.Context
import android.graphics.Bitmap
import android.graphics.Canvas
import android.graphics.Color
import android.graphics.Paint
import android.graphics.RectF
import android.util.AttributeSet
import android.view.MotionEvent
import android.view.View
import org.mobilevos.core.BoxPrompt
import org.mobilevos.core.Palette

/**
 * Over the camera preview: the last segmented frame (camera pixels with the objects tinted) and the boxes the
 * user drags, both placed as the preview's FIT_CENTER places the camera frame. Boxes are kept in frame pixels.
 */
class OverlayView(context: Context, attrs: AttributeSet?) : View(context, attrs) {
    private var frameHeight = 0
    private var frameWidth = 0
    private var shown: Bitmap? = null
    private val boxes = ArrayList<BoxPrompt.Box>()
    private var drag: RectF? = null // view pixels: where the finger went down, where it is now
    private val stroke = Paint().apply { style = Paint.Style.STROKE; strokeWidth = 5f; isAntiAlias = true }
    private val target = RectF()

    /** Boxes can be drawn while nothing is tracked. */
    var editable = true

    fun setFrameSize(height: Int, width: Int) {
        frameHeight = height
        frameWidth = width
    }

    fun show(frame: Bitmap?) {
        shown = frame
        invalidate()
    }

    fun takeBoxes(): List<BoxPrompt.Box> = ArrayList(boxes).also { boxes.clear(); invalidate() }

    fun clear() {
        boxes.clear()
        shown = null
        invalidate()
    }

    private fun scale(): Float = minOf(width.toFloat() / frameWidth, height.toFloat() / frameHeight)

    private fun toFrame(x: Float, y: Float): Pair<Float, Float> {
        val s = scale()
        return (x - (width - frameWidth * s) / 2) / s to (y - (height - frameHeight * s) / 2) / s
    }

    private fun toView(box: BoxPrompt.Box): RectF {
        val s = scale()
        val left = (width - frameWidth * s) / 2
        val top = (height - frameHeight * s) / 2
        return RectF(left + box.x0 * s, top + box.y0 * s, left + box.x1 * s, top + box.y1 * s)
    }

    override fun onTouchEvent(event: MotionEvent): Boolean {
        if (!editable || frameWidth == 0) return false
        when (event.actionMasked) {
            MotionEvent.ACTION_DOWN -> drag = RectF(event.x, event.y, event.x, event.y)
            MotionEvent.ACTION_MOVE -> drag?.apply { right = event.x; bottom = event.y }
            MotionEvent.ACTION_UP -> drag?.let {
                val (ax, ay) = toFrame(it.left, it.top)
                val (bx, by) = toFrame(event.x, event.y)
                val box = BoxPrompt.Box.spanning(ax, ay, bx, by, frameHeight, frameWidth)
                if (BoxPrompt.problem(box, frameHeight, frameWidth) == null && boxes.size < 255) boxes.add(box)
                drag = null
            }
            MotionEvent.ACTION_CANCEL -> drag = null
        }
        invalidate()
        return true
    }

    override fun onDraw(canvas: Canvas) {
        super.onDraw(canvas)
        if (frameWidth == 0) return
        shown?.let { bitmap ->
            val s = scale()
            target.set((width - frameWidth * s) / 2, (height - frameHeight * s) / 2,
                (width + frameWidth * s) / 2, (height + frameHeight * s) / 2)
            canvas.drawBitmap(bitmap, null, target, null)
        }
        boxes.forEachIndexed { index, box ->
            val (r, g, b) = Palette.rgb(index + 1)
            stroke.color = Color.rgb(r, g, b)
            canvas.drawRect(toView(box), stroke)
        }
        drag?.let {
            stroke.color = Color.WHITE
            canvas.drawRect(minOf(it.left, it.right), minOf(it.top, it.bottom), maxOf(it.left, it.right),
                maxOf(it.top, it.bottom), stroke)
        }
    }
}
