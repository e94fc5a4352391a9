package org.mobilevos.demo

import org.mobilevos.core.BoxPrompt
import org.opencv.android.OpenCVLoader
import org.opencv.core.Core
import org.opencv.core.CvType
import org.opencv.core.Mat
import org.opencv.core.Rect
import org.opencv.core.Size
import org.opencv.imgproc.Imgproc

/** The first mask from the dragged boxes: OpenCV's GrabCut where [BoxPrompt] says, as `mvos segment --box`. */
object GrabCutPrompt {
    init {
        check(OpenCVLoader.initLocal()) { "OpenCV's native library did not load" }
    }

    /** Object ids (box i is object i+1) at the frame's size, or an error naming the box GrabCut found empty. */
    fun mask(rgb: ByteArray, height: Int, width: Int, boxes: List<BoxPrompt.Box>): Result<ByteArray> {
        val frame = Mat(height, width, CvType.CV_8UC3).apply { put(0, 0, rgb) }
        val bgr = Mat().also { Imgproc.cvtColor(frame, it, Imgproc.COLOR_RGB2BGR) }
        val foregrounds = boxes.mapIndexed { index, box ->
            BoxPrompt.problem(box, height, width)?.let { return Result.failure(IllegalArgumentException("box ${index + 1}: $it")) }
            val plan = BoxPrompt.plan(height, width, box)
            val shrunk = plan.height != height || plan.width != width
            val image = if (!shrunk) bgr else Mat().also {
                Imgproc.resize(bgr, it, Size(plan.width.toDouble(), plan.height.toDouble()), 0.0, 0.0, Imgproc.INTER_AREA)
            }
            val labels = Mat.zeros(plan.height, plan.width, CvType.CV_8UC1)
            Core.setRNGSeed(0) // GrabCut's k-means start: the same mask every run
            Imgproc.grabCut(image, labels, Rect(plan.x, plan.y, plan.w, plan.h), Mat(), Mat(), BoxPrompt.ITERATIONS,
                Imgproc.GC_INIT_WITH_RECT)
            val small = ByteArray(plan.height * plan.width).also { labels.get(0, 0, it) }
            for (i in small.indices) small[i] = (small[i].toInt() and 1).toByte() // GC_FGD 1, GC_PR_FGD 3: odd
            val found = if (!shrunk) small else {
                val full = Mat()
                Imgproc.resize(Mat(plan.height, plan.width, CvType.CV_8UC1).apply { put(0, 0, small) }, full,
                    Size(width.toDouble(), height.toDouble()), 0.0, 0.0, Imgproc.INTER_NEAREST)
                ByteArray(height * width).also { full.get(0, 0, it) }
            }
            if (found.none { it.toInt() != 0 }) {
                return Result.failure(IllegalArgumentException("box ${index + 1}: GrabCut found no object inside it"))
            }
            found
        }
        return Result.success(BoxPrompt.combine(foregrounds, boxes, height * width))
    }
}
