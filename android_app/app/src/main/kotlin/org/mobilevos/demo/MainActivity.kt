package org.mobilevos.demo

import android.Manifest.permission.CAMERA
import android.content.pm.PackageManager
import android.graphics.Bitmap
import android.graphics.Matrix
import android.os.Build
import android.os.Bundle
import android.util.Log
import android.util.Size
import android.widget.Button
import android.widget.TextView
import android.widget.Toast
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.ImageProxy
import androidx.camera.core.Preview
import androidx.camera.core.resolutionselector.AspectRatioStrategy
import androidx.camera.core.resolutionselector.ResolutionSelector
import androidx.camera.core.resolutionselector.ResolutionStrategy
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.camera.view.PreviewView
import androidx.core.content.ContextCompat
import org.mobilevos.core.BenchmarkRecorder
import org.mobilevos.core.BoxPrompt
import org.mobilevos.core.Engine
import org.mobilevos.core.FrameResult
import org.mobilevos.core.Manifest
import org.mobilevos.core.MemoryEncoders
import org.mobilevos.core.Postprocess
import org.mobilevos.core.Preprocess
import java.io.File
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.atomic.AtomicReference

/**
 * Live segmentation of the back camera. Glue only: CameraX frames go to the core's [Engine] (over LiteRT, see
 * [LiteRtGraphs]) on one analysis thread; the first mask comes from GrabCut on the dragged boxes.
 *
 * Intent extras (adb shell am start -n org.mobilevos.demo/.MainActivity --es delegate cpu ...):
 *   delegate gpu|cpu (gpu), precision fp32|fp16|int8 (gpu: fp16, cpu: int8, where exported), queue_len (the
 *   shortest exported), memory_precision fp32|fp16 (the encoders of the frames the memory keeps; default: precision),
 *   threads (4), benchmark_frames N (start the benchmark mode as soon as objects are tracked),
 *   center_box true (track what is inside the middle half of the first frame: unattended benchmark runs)
 */
class MainActivity : AppCompatActivity() {
    private lateinit var preview: PreviewView
    private lateinit var overlay: OverlayView
    private lateinit var stats: TextView
    private val analysis: ExecutorService = Executors.newSingleThreadExecutor()

    // Owned by the analysis thread.
    private var graphs: LiteRtGraphs? = null
    private var memoryGraphs: LiteRtGraphs? = null // the memory precision's encoders, where asked for
    private var engine: Engine? = null
    private var recorder: BenchmarkRecorder? = null
    private var benchmarkTarget = 0
    private var frameMillisAverage = 0.0

    // Handed from the UI thread to the analysis thread.
    private val pendingBoxes = AtomicReference<List<BoxPrompt.Box>?>(null)
    @Volatile private var resetRequested = false
    @Volatile private var benchmarkRequested = 0
    @Volatile private var centerBoxPending = false

    private val askCamera = registerForActivityResult(ActivityResultContracts.RequestPermission()) { granted ->
        if (granted) startCamera() else stats.setText(R.string.no_camera)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        preview = findViewById(R.id.preview)
        overlay = findViewById(R.id.overlay)
        stats = findViewById(R.id.stats)
        findViewById<Button>(R.id.track).setOnClickListener {
            val boxes = overlay.takeBoxes()
            if (boxes.isEmpty()) toast(getString(R.string.hint)) else pendingBoxes.set(boxes)
        }
        findViewById<Button>(R.id.reset).setOnClickListener {
            resetRequested = true
            overlay.clear()
            overlay.editable = true
            stats.setText(R.string.hint)
        }
        findViewById<Button>(R.id.benchmark).setOnClickListener { benchmarkRequested = BENCHMARK_FRAMES }
        benchmarkRequested = intent.getIntExtra("benchmark_frames", 0)
        centerBoxPending = intent.getBooleanExtra("center_box", false)

        if (ContextCompat.checkSelfPermission(this, CAMERA) == PackageManager.PERMISSION_GRANTED) startCamera()
        else askCamera.launch(CAMERA)
    }

    override fun onDestroy() {
        super.onDestroy()
        analysis.execute { graphs?.close(); memoryGraphs?.close() } // the GPU delegate is closed on the thread that made it
        analysis.shutdown()
    }

    private fun startCamera() {
        val future = ProcessCameraProvider.getInstance(this)
        future.addListener({
            val provider = future.get()
            // 16:9 at about 720p for both, so preview and overlay frame the same picture
            val selector = ResolutionSelector.Builder()
                .setAspectRatioStrategy(AspectRatioStrategy.RATIO_16_9_FALLBACK_AUTO_STRATEGY)
                .setResolutionStrategy(ResolutionStrategy(Size(1280, 720),
                    ResolutionStrategy.FALLBACK_RULE_CLOSEST_HIGHER_THEN_LOWER))
                .build()
            val previewCase = Preview.Builder().setResolutionSelector(selector).build()
            previewCase.setSurfaceProvider(preview.surfaceProvider)
            val analysisCase = ImageAnalysis.Builder()
                .setResolutionSelector(selector)
                .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST) // never queue stale frames
                .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_RGBA_8888)
                .build()
            analysisCase.setAnalyzer(analysis, ::analyze)
            provider.unbindAll()
            provider.bindToLifecycle(this, CameraSelector.DEFAULT_BACK_CAMERA, previewCase, analysisCase)
        }, ContextCompat.getMainExecutor(this))
    }

    /** One camera frame, on the analysis thread. */
    private fun analyze(image: ImageProxy) {
        val started = System.nanoTime()
        val bitmap = image.use { upright(it.toBitmap(), it.imageInfo.rotationDegrees) }
        val h = bitmap.height
        val w = bitmap.width
        val pixels = IntArray(h * w).also { bitmap.getPixels(it, 0, w, 0, 0, w, h) }
        runOnUiThread { overlay.setFrameSize(h, w) }
        val engine = try {
            engine ?: open().also { engine = it }
        } catch (e: Exception) {
            Log.e(TAG, "cannot load the model", e)
            runOnUiThread { stats.text = "cannot load the model: ${e.message}" }
            return
        }
        if (resetRequested) {
            resetRequested = false
            engine.reset()
            recorder = null
        }
        if (centerBoxPending) {
            centerBoxPending = false
            pendingBoxes.set(listOf(BoxPrompt.Box(w / 4, h / 4, w - w / 4, h - h / 4)))
        }
        val rgb = Preprocess.rgbOfArgb(pixels)
        val boxes = pendingBoxes.getAndSet(null)
        val result: FrameResult = when {
            boxes != null -> {
                val mask = GrabCutPrompt.mask(rgb, h, w, boxes).getOrElse { error ->
                    runOnUiThread { toast(error.message ?: "GrabCut failed") }
                    return
                }
                engine.reset()
                runOnUiThread { overlay.editable = false }
                engine.step(rgb, h, w, mask)
            }
            engine.objectIds.isNotEmpty() -> engine.step(rgb, h, w)
            else -> return // nothing tracked yet: the preview alone
        }
        val shown = Bitmap.createBitmap(Postprocess.overlay(pixels, result.labels), w, h, Bitmap.Config.ARGB_8888)
        val frameMillis = (System.nanoTime() - started) / 1e6
        frameMillisAverage = if (frameMillisAverage == 0.0) frameMillis else 0.9 * frameMillisAverage + 0.1 * frameMillis
        val benchmark = benchmarkStep(result, frameMillis, boxes != null, h, w)
        val text = statsText(result) + (benchmark?.let { "\n$it" } ?: "")
        runOnUiThread {
            overlay.show(shown)
            stats.text = text
        }
    }

    /** The benchmark mode: N tracked frames (not the one GrabCut ran on), then the CSV `mvos bench --app` pulls. */
    private fun benchmarkStep(result: FrameResult, frameMillis: Double, prompted: Boolean, h: Int, w: Int): String? {
        val graphs = graphs ?: return null
        if (benchmarkRequested > 0 && recorder == null) {
            benchmarkTarget = benchmarkRequested
            benchmarkRequested = 0
            recorder = BenchmarkRecorder(Build.DEVICE, Build.MODEL, graphs.manifest.variant, graphs.precision,
                graphs.delegate, engine!!.queueLen, graphs.threads, "${w}x$h", memoryGraphs?.precision)
        }
        val recorder = recorder ?: return null
        if (!prompted) recorder.add(result, frameMillis)
        if (recorder.frames < benchmarkTarget) return "benchmark: ${recorder.frames}/$benchmarkTarget frames"
        this.recorder = null
        val out = File(getExternalFilesDir(null), "benchmark.csv")
        recorder.write(out)
        Log.i(TAG, "benchmark written to $out")
        return "benchmark: $benchmarkTarget frames written to $out"
    }

    private fun open(): Engine {
        val (folder, manifest) = ModelAssets.install(this)
        val gpu = intent.getStringExtra("delegate") != "cpu"
        val exported = manifest.precisions()
        val precision = intent.getStringExtra("precision")
            // int8 is opt-in: it follows fp32 closely only where the model's masks are sharp (docs/benchmarks.md)
            ?: (if (gpu) listOf("fp16", "fp32") else listOf("fp32", "fp16")).firstOrNull { it in exported }
            ?: exported.first()
        // the export's own queue length (mvos export's default is the inference default, T=2)
        val queueLen = intent.getIntExtra("queue_len", manifest.queueLengths(precision).firstOrNull()
            ?: throw IllegalArgumentException("the export has no $precision decoder"))
        val threads = intent.getIntExtra("threads", 4)
        val graphs = LiteRtGraphs(folder, manifest, precision, queueLen, gpu, threads)
        this.graphs = graphs
        // int8 reading a memory the fp32 encoders made follows fp32 far more closely (docs/benchmarks.md)
        val memoryPrecision = intent.getStringExtra("memory_precision")?.takeIf { it != precision }
        val memory = memoryPrecision?.let { LiteRtGraphs(folder, manifest, it, queueLen, gpu, threads, Manifest.ENCODERS) }
        memoryGraphs = memory
        return Engine(manifest, queueLen, graphs.runner("key_encoder"), graphs.runner("value_encoder"),
            graphs.runner("decoder"), memoryEncoders = memory?.let {
                MemoryEncoders(manifest, precision, it.runner("key_encoder"), it.runner("value_encoder"))
            })
    }

    private fun statsText(result: FrameResult): String {
        val graphs = graphs!!
        // a memorised frame's encoders may be the memory's (timed under their own names)
        val perGraph = Manifest.SUBGRAPHS.joinToString(" ") {
            "%s %.1f".format(SHORT.getValue(it), result.millis[it] ?: result.millis[MemoryEncoders.timing(it)] ?: 0.0)
        }
        return "%s %s %s T=%d\n%.1f fps  frame %.1f ms\n%s ms".format(graphs.manifest.variant, graphs.precision,
            graphs.delegate.uppercase(), engine!!.queueLen, 1000.0 / frameMillisAverage, frameMillisAverage, perGraph)
    }

    private fun upright(bitmap: Bitmap, degrees: Int): Bitmap =
        if (degrees == 0) bitmap
        else Bitmap.createBitmap(bitmap, 0, 0, bitmap.width, bitmap.height, Matrix().apply { postRotate(degrees.toFloat()) }, true)

    private fun toast(text: String) = Toast.makeText(this, text, Toast.LENGTH_LONG).show()

    private companion object {
        const val TAG = "mvos"
        const val BENCHMARK_FRAMES = 200
        val SHORT = mapOf("key_encoder" to "key", "value_encoder" to "value", "decoder" to "decoder")
    }
}
