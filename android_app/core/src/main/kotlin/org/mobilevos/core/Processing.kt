package org.mobilevos.core

import kotlin.math.exp
import kotlin.math.floor
import kotlin.math.ln
import kotlin.math.max
import kotlin.math.min

/**
 * How a camera frame of [original] size maps to the export's fixed input: resized to fit inside it keeping the
 * aspect ratio, then zero-padded bottom/right to [padded] (`FrameGeometry.for_frame` with a fixed size).
 */
data class Geometry(val originalH: Int, val originalW: Int, val resizedH: Int, val resizedW: Int,
                    val paddedH: Int, val paddedW: Int) {
    val resizes: Boolean get() = resizedH != originalH || resizedW != originalW
    /** Made smaller to fit (`FrameGeometry.shrinks`): shrunk by area averaging, not bilinear. */
    val shrinks: Boolean get() = resizes && resizedH <= originalH && resizedW <= originalW

    companion object {
        fun forFrame(height: Int, width: Int, inputH: Int, inputW: Int): Geometry {
            val scale = min(inputH.toDouble() / height, inputW.toDouble() / width)
            // Python's round: halves go to the even neighbour.
            val h = min(inputH, Math.rint(height * scale).toInt())
            val w = min(inputW, Math.rint(width * scale).toInt())
            return Geometry(height, width, h, w, inputH, inputW)
        }
    }
}

/**
 * Resampling as the Python engine computes it in float32, so the core's frames and masks match it within 1e-5:
 * area averaging when shrinking a camera frame (OpenCV's INTER_AREA, its taps exactly), bilinear with
 * antialiasing when enlarging one (F.interpolate, align_corners=False; a triangle filter, width pass then height
 * pass), OpenCV's bilinear to bring probabilities back to the camera's size, nearest for masks (F.interpolate).
 */
object Resample {
    private class Taps(val start: IntArray, val weights: Array<FloatArray>)

    /**
     * OpenCV's INTER_AREA taps along one axis (`computeResizeAreaTab`): output cell [o*s, (o+1)*s) takes each
     * source pixel by the share of the cell it covers; slivers of 1e-3 of a pixel or less are left out, as OpenCV
     * does (not renormalised), so the weights are OpenCV's own.
     */
    private fun areaTaps(inSize: Int, outSize: Int): Taps {
        val scale = 1.0 / (outSize.toDouble() / inSize)
        val starts = IntArray(outSize)
        val weights = Array(outSize) { o ->
            val from = o * scale
            val to = from + scale
            val cell = min(scale, inSize - from)
            val last = min(floor(to).toInt(), inSize - 1)
            val first = min(kotlin.math.ceil(from).toInt(), last)
            val taps = ArrayList<Float>()
            var start = first
            if (first - from > 1e-3) {
                start = first - 1
                taps.add(((first - from) / cell).toFloat())
            }
            for (i in first until last) taps.add((1.0 / cell).toFloat())
            if (to - last > 1e-3) taps.add((min(min(to - last, 1.0), cell) / cell).toFloat())
            starts[o] = start
            taps.toFloatArray()
        }
        return Taps(starts, weights)
    }

    /** HWC float image -> outH x outW x C, each output pixel the average over its area (OpenCV's INTER_AREA). */
    fun area(src: FloatArray, h: Int, w: Int, c: Int, outH: Int, outW: Int): FloatArray =
        separable(src, h, w, c, outH, outW, areaTaps(w, outW), areaTaps(h, outH))

    private fun antialiasTaps(inSize: Int, outSize: Int): Taps {
        val scale = inSize.toFloat() / outSize.toFloat()
        val support = if (scale >= 1f) scale else 1f
        val invScale = if (scale >= 1f) 1f / scale else 1f
        val starts = IntArray(outSize)
        val weights = Array(outSize) { i ->
            val center = scale * (i + 0.5f)
            val lo = max((center - support + 0.5f).toInt(), 0)
            val hi = min((center + support + 0.5f).toInt(), inSize)
            starts[i] = lo
            val w = FloatArray(hi - lo) { j -> max(0f, 1f - kotlin.math.abs((j + lo - center + 0.5f) * invScale)) }
            var total = 0f
            for (v in w) total += v
            if (total != 0f) for (j in w.indices) w[j] = w[j] / total
            w
        }
        return Taps(starts, weights)
    }

    /** HWC float image -> outH x outW x C, antialiased bilinear (torch's antialias=True). */
    fun antialiased(src: FloatArray, h: Int, w: Int, c: Int, outH: Int, outW: Int): FloatArray =
        separable(src, h, w, c, outH, outW, antialiasTaps(w, outW), antialiasTaps(h, outH))

    /** Width pass, then height pass, each output the weighted sum of its taps in source order. */
    private fun separable(src: FloatArray, h: Int, w: Int, c: Int, outH: Int, outW: Int, across: Taps,
                          down: Taps): FloatArray {
        val tmp = FloatArray(h * outW * c)
        for (y in 0 until h) for (x in 0 until outW) {
            val wt = across.weights[x]
            val lo = across.start[x]
            for (ch in 0 until c) {
                var acc = 0f
                for (j in wt.indices) acc += wt[j] * src[(y * w + lo + j) * c + ch]
                tmp[(y * outW + x) * c + ch] = acc
            }
        }
        val out = FloatArray(outH * outW * c)
        for (y in 0 until outH) {
            val wt = down.weights[y]
            val lo = down.start[y]
            for (x in 0 until outW) for (ch in 0 until c) {
                var acc = 0f
                for (j in wt.indices) acc += wt[j] * tmp[((lo + j) * outW + x) * c + ch]
                out[(y * outW + x) * c + ch] = acc
            }
        }
        return out
    }

    private class Linear(val i0: IntArray, val i1: IntArray, val lambda1: FloatArray)

    /** OpenCV's INTER_LINEAR taps (`resize`): source position in double, then float; clamped at both edges. */
    private fun linear(inSize: Int, outSize: Int): Linear {
        val scale = 1.0 / (outSize.toDouble() / inSize)
        val i0 = IntArray(outSize)
        val i1 = IntArray(outSize)
        val l1 = FloatArray(outSize)
        for (o in 0 until outSize) {
            val src = ((o + 0.5) * scale - 0.5).toFloat()
            var f = floor(src).toInt()
            var lambda = src - f
            if (f < 0) { f = 0; lambda = 0f }
            if (f >= inSize - 1) { f = inSize - 1; lambda = 0f }
            i0[o] = f
            i1[o] = min(f + 1, inSize - 1)
            l1[o] = lambda
        }
        return Linear(i0, i1, l1)
    }

    /** Channel-planar float maps (C x H x W) -> C x outH x outW, bilinear as OpenCV's INTER_LINEAR in float. */
    fun bilinear(src: Array<FloatArray>, h: Int, w: Int, outH: Int, outW: Int): Array<FloatArray> {
        val ys = linear(h, outH)
        val xs = linear(w, outW)
        return Array(src.size) { ch ->
            val s = src[ch]
            FloatArray(outH * outW) { k ->
                val y = k / outW
                val x = k % outW
                val ly = ys.lambda1[y]
                val lx = xs.lambda1[x]
                val top = (1f - lx) * s[ys.i0[y] * w + xs.i0[x]] + lx * s[ys.i0[y] * w + xs.i1[x]]
                val bottom = (1f - lx) * s[ys.i1[y] * w + xs.i0[x]] + lx * s[ys.i1[y] * w + xs.i1[x]]
                (1f - ly) * top + ly * bottom
            }
        }
    }

    /** A label map (H x W bytes) -> outH x outW, nearest (torch's mode="nearest"). */
    fun nearest(src: ByteArray, h: Int, w: Int, outH: Int, outW: Int): ByteArray {
        val sy = h.toFloat() / outH
        val sx = w.toFloat() / outW
        return ByteArray(outH * outW) { k ->
            val y = min(floor((k / outW) * sy).toInt(), h - 1)
            val x = min(floor((k % outW) * sx).toInt(), w - 1)
            src[y * w + x]
        }
    }
}

/** Camera frame -> the key encoder's input: ImageNet-normalised, resized (shrunk by area), zero-padded. */
object Preprocess {
    /** RGB bytes (H x W x 3) of an Android ARGB_8888 pixel array. */
    fun rgbOfArgb(pixels: IntArray): ByteArray {
        val out = ByteArray(pixels.size * 3)
        for (i in pixels.indices) {
            val p = pixels[i]
            out[3 * i] = (p shr 16).toByte()
            out[3 * i + 1] = (p shr 8).toByte()
            out[3 * i + 2] = p.toByte()
        }
        return out
    }

    /** 1 x paddedH x paddedW x 3 floats (NHWC), as `Segmenter._prepare_frame` for a fixed-size backend. */
    fun frame(rgb: ByteArray, g: Geometry, mean: FloatArray, std: FloatArray): FloatArray {
        // Normalised, then resized, as Python (both are linear)
        val normalised = FloatArray(rgb.size) { ((rgb[it].toInt() and 0xFF) / 255f - mean[it % 3]) / std[it % 3] }
        val x = when {
            g.shrinks -> Resample.area(normalised, g.originalH, g.originalW, 3, g.resizedH, g.resizedW)
            g.resizes -> Resample.antialiased(normalised, g.originalH, g.originalW, 3, g.resizedH, g.resizedW)
            else -> normalised
        }
        val out = FloatArray(g.paddedH * g.paddedW * 3) // padding stays 0 in normalised space
        for (y in 0 until g.resizedH) for (xx in 0 until g.resizedW) for (c in 0 until 3) {
            out[(y * g.paddedW + xx) * 3 + c] = x[(y * g.resizedW + xx) * 3 + c]
        }
        return out
    }

    /** A mask of object ids at the camera's size -> one 0/1 map per id at the padded size (nearest, as Python). */
    fun given(mask: ByteArray, ids: List<Int>, g: Geometry): Array<FloatArray> {
        val resized = if (g.resizes) Resample.nearest(mask, g.originalH, g.originalW, g.resizedH, g.resizedW) else mask
        return Array(ids.size) { o ->
            val id = ids[o].toByte()
            val map = FloatArray(g.paddedH * g.paddedW)
            for (y in 0 until g.resizedH) for (x in 0 until g.resizedW) {
                if (resized[y * g.resizedW + x] == id) map[y * g.paddedW + x] = 1f
            }
            map
        }
    }
}

/** Decoder logits -> object probabilities -> soft aggregation -> camera-size probabilities -> label map. */
object Postprocess {
    fun sigmoid(logits: FloatArray): FloatArray = FloatArray(logits.size) { 1f / (1f + exp(-logits[it])) }

    /** STCN's soft aggregation of N object maps into 1+N probabilities (background first) summing to 1. */
    fun softAggregate(objectProbs: Array<FloatArray>): Array<FloatArray> {
        val n = objectProbs.size
        val size = if (n > 0) objectProbs[0].size else 0
        val out = Array(n + 1) { FloatArray(size) }
        val odds = FloatArray(n + 1)
        for (i in 0 until size) {
            var background = 1f
            for (o in 0 until n) background *= 1f - objectProbs[o][i]
            var top = Float.NEGATIVE_INFINITY
            for (c in 0..n) {
                val p = (if (c == 0) background else objectProbs[c - 1][i]).coerceIn(1e-7f, 1f - 1e-7f)
                odds[c] = ln(p / (1f - p))
                top = max(top, odds[c])
            }
            var total = 0f
            for (c in 0..n) {
                odds[c] = exp(odds[c] - top)
                total += odds[c]
            }
            for (c in 0..n) out[c][i] = odds[c] / total
        }
        return out
    }

    /** Padded-size maps -> the camera's size: cropped to the resized area, bilinear back if it was resized. */
    fun restore(maps: Array<FloatArray>, g: Geometry): Array<FloatArray> {
        val cropped = Array(maps.size) { c ->
            FloatArray(g.resizedH * g.resizedW) { k -> maps[c][(k / g.resizedW) * g.paddedW + k % g.resizedW] }
        }
        return if (g.resizes) Resample.bilinear(cropped, g.resizedH, g.resizedW, g.originalH, g.originalW) else cropped
    }

    /** 1+N probability maps -> object ids (0 background); the first of equal maxima wins, as numpy's argmax. */
    fun labels(probs: Array<FloatArray>, objectIds: List<Int>): ByteArray {
        val size = probs[0].size
        return ByteArray(size) { i ->
            var best = 0
            for (c in 1 until probs.size) if (probs[c][i] > probs[best][i]) best = c
            if (best == 0) 0 else objectIds[best - 1].toByte()
        }
    }

    /** ARGB pixels with each object tinted in the DAVIS palette colour (alpha 0.5), for the live overlay. */
    fun overlay(pixels: IntArray, labels: ByteArray, alpha: Float = 0.5f): IntArray = IntArray(pixels.size) { i ->
        val id = labels[i].toInt() and 0xFF
        if (id == 0) pixels[i] else {
            val colour = Palette.rgb(id)
            val p = pixels[i]
            fun mix(shift: Int, c: Int) = ((((p shr shift) and 0xFF) * (1 - alpha) + c * alpha).toInt() and 0xFF) shl shift
            (p and 0xFF000000.toInt()) or mix(16, colour[0]) or mix(8, colour[1]) or mix(0, colour[2])
        }
    }
}

/** The DAVIS/PASCAL VOC palette the Python side writes masks with (colour i from the bits of i). */
object Palette {
    fun rgb(index: Int): IntArray {
        var value = index
        var r = 0
        var g = 0
        var b = 0
        for (bit in 0 until 8) {
            r = r or (((value shr 0) and 1) shl (7 - bit))
            g = g or (((value shr 1) and 1) shl (7 - bit))
            b = b or (((value shr 2) and 1) shl (7 - bit))
            value = value shr 3
        }
        return intArrayOf(r, g, b)
    }
}
