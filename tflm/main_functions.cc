/* ShuffleNet image classification with TensorFlow Lite for Microcontrollers.

   The model, its settings, its operator list and sample inputs are generated
   by keras_shufflenet.micro.export into <output_dir>/tflm/ (model_data.*,
   model_settings.*, op_resolver.h, sample_input_data.*). A real application
   replaces the samples with camera frames quantized the same way. */

#include "main_functions.h"

#include <cstdint>

#include "model_data.h"
#include "model_settings.h"
#include "op_resolver.h"
#include "sample_input_data.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/micro/system_setup.h"
#include "tensorflow/lite/schema/schema_generated.h"

#ifdef KS_MARKERS
#include "markers.h"
#endif

namespace {
const tflite::Model* model = nullptr;
tflite::MicroInterpreter* interpreter = nullptr;
TfLiteTensor* input = nullptr;

// Activations and TFLM's bookkeeping live here. kTensorArenaSize is the
// smallest arena the export measured plus a margin; 16-byte alignment is what
// TFLM's allocator expects.
// KS_TENSOR_ARENA_SIZE overrides it at build time (tflm/Makefile's
// ARENA_SIZE), to measure the smallest arena on a target without re-exporting.
#ifdef KS_TENSOR_ARENA_SIZE
constexpr int kArenaSize = KS_TENSOR_ARENA_SIZE;
#else
constexpr int kArenaSize = kTensorArenaSize;
#endif
alignas(16) static uint8_t tensor_arena[kArenaSize];

// The next sample loop() runs.
int sample_index = 0;

#ifdef KS_MARKERS
OpMarkerProfiler profiler;
tflite::MicroProfilerInterface* const kProfiler = &profiler;
#else
tflite::MicroProfilerInterface* const kProfiler = nullptr;
#endif
}  // namespace

bool setup() {
  tflite::InitializeTarget();

  model = tflite::GetModel(kModelData);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    MicroPrintf("Model schema version %d differs from the supported version %d.", model->version(),
                TFLITE_SCHEMA_VERSION);
    return false;
  }

  // Registers exactly the operators the model uses, so the linker drops every
  // other kernel (an all-ops resolver would cost tens of kilobytes of flash).
  static ModelOpResolver resolver;
  if (RegisterModelOps(resolver) != kTfLiteOk) {
    MicroPrintf("Registering the model's operators failed.");
    return false;
  }

  static tflite::MicroInterpreter static_interpreter(model, resolver, tensor_arena, kArenaSize,
                                                     /*resource_variables=*/nullptr, kProfiler);
  interpreter = &static_interpreter;
  if (interpreter->AllocateTensors() != kTfLiteOk) {
    MicroPrintf("AllocateTensors() failed: the tensor arena (%d bytes) is too small.", kArenaSize);
    interpreter = nullptr;
    return false;
  }
  MicroPrintf("Arena: %d of %d bytes used.", static_cast<int>(interpreter->arena_used_bytes()), kArenaSize);

  input = interpreter->input(0);
  if (input->type != kTfLiteInt8 || input->dims->size != 4 || input->dims->data[1] != kNumRows ||
      input->dims->data[2] != kNumCols || input->dims->data[3] != kNumChannels) {
    MicroPrintf("The model's input is not the int8 %dx%dx%d image model_settings.h describes.", kNumRows, kNumCols,
                kNumChannels);
    interpreter = nullptr;
    return false;
  }
  return true;
}

bool loop() {
  if (interpreter == nullptr) return false;
  const int sample = sample_index;
  sample_index = (sample_index + 1) % kNumSamples;

  // The samples are already int8: float pixels preprocessed to [-1, 1] as in
  // training, divided by kInputScale, plus kInputZeroPoint.
  for (int i = 0; i < kMaxImageSize; ++i) {
    input->data.int8[i] = g_sample_input_data[sample][i];
  }
#ifdef KS_MARKERS
  ks_marker_invoke_begin();
#endif
  const TfLiteStatus status = interpreter->Invoke();
#ifdef KS_MARKERS
  ks_marker_invoke_end();
  if (sample == 0) profiler.PrintOps();
#endif
  if (status != kTfLiteOk) {
    MicroPrintf("Invoke failed.");
    return false;
  }

  const TfLiteTensor* output = interpreter->output(0);
  const int8_t* expected = g_sample_expected_output[sample];
  int top = 0;
  int host_top = 0;
  int max_diff = 0;
  for (int i = 0; i < kOutputSize; ++i) {
    if (output->data.int8[i] > output->data.int8[top]) top = i;
    if (expected[i] > expected[host_top]) host_top = i;
    const int diff = output->data.int8[i] - expected[i];
    if (diff > max_diff || -diff > max_diff) max_diff = diff > 0 ? diff : -diff;
  }
  // Dequantized score: (q - zero_point) * scale; for a softmax output, a probability.
  const float score = (output->data.int8[top] - kOutputZeroPoint) * kOutputScale;
  const char* label = top < kCategoryCount ? kCategoryLabels[top] : "?";
  MicroPrintf("Sample %d: top class %d (%s), score %d/1000; true class %d; host top class %d; output %s the host's "
              "TFLM output (largest difference %d).",
              sample, top, label, static_cast<int>(score * 1000), g_sample_labels[sample], host_top,
              max_diff == 0 ? "matches" : "DIFFERS FROM", max_diff);
#ifdef KS_MARKERS
  // The host/emulator check build only: the raw int8 output, 16 values a line,
  // for the host that compares it value by value (a board build prints the line above).
  constexpr int kValuesPerLine = 16;
  for (int start = 0; start < kOutputSize; start += kValuesPerLine) {
    char line[kValuesPerLine * 5 + 1];
    int used = 0;
    for (int i = start; i < kOutputSize && i < start + kValuesPerLine; ++i) {
      used += MicroSnprintf(line + used, sizeof(line) - used, " %d", output->data.int8[i]);
    }
    MicroPrintf("Sample %d output %d:%s", sample, start, line);
  }
#endif
  return true;
}
