/* ShuffleNet image classification with TensorFlow Lite for Microcontrollers.

   The model, its settings, its operator list and a sample input are generated
   by keras_shufflenet.micro.export into <output_dir>/tflm/ (model_data.*,
   model_settings.*, op_resolver.h, sample_input_data.*). A real application
   replaces the sample with camera frames quantized the same way. */

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

namespace {
const tflite::Model* model = nullptr;
tflite::MicroInterpreter* interpreter = nullptr;
TfLiteTensor* input = nullptr;

// Activations and TFLM's bookkeeping live here. kTensorArenaSize is the
// smallest arena the export measured plus a margin; 16-byte alignment is what
// TFLM's allocator expects.
alignas(16) static uint8_t tensor_arena[kTensorArenaSize];
}  // namespace

void setup() {
  tflite::InitializeTarget();

  model = tflite::GetModel(kModelData);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    MicroPrintf("Model schema version %d differs from the supported version %d.", model->version(),
                TFLITE_SCHEMA_VERSION);
    return;
  }

  // Registers exactly the operators the model uses, so the linker drops every
  // other kernel (an all-ops resolver would cost tens of kilobytes of flash).
  static ModelOpResolver resolver;
  if (RegisterModelOps(resolver) != kTfLiteOk) {
    MicroPrintf("Registering the model's operators failed.");
    return;
  }

  static tflite::MicroInterpreter static_interpreter(model, resolver, tensor_arena, kTensorArenaSize);
  interpreter = &static_interpreter;
  if (interpreter->AllocateTensors() != kTfLiteOk) {
    MicroPrintf("AllocateTensors() failed: kTensorArenaSize (%d bytes) is too small.", kTensorArenaSize);
    interpreter = nullptr;
    return;
  }
  MicroPrintf("Arena: %d of %d bytes used.", static_cast<int>(interpreter->arena_used_bytes()), kTensorArenaSize);

  input = interpreter->input(0);
  if (input->type != kTfLiteInt8 || input->dims->size != 4 || input->dims->data[1] != kNumRows ||
      input->dims->data[2] != kNumCols || input->dims->data[3] != kNumChannels) {
    MicroPrintf("The model's input is not the int8 %dx%dx%d image model_settings.h describes.", kNumRows, kNumCols,
                kNumChannels);
    interpreter = nullptr;
  }
}

void loop() {
  if (interpreter == nullptr) return;

  // The sample is already int8: float pixels preprocessed to [-1, 1] as in
  // training, divided by kInputScale, plus kInputZeroPoint.
  for (int i = 0; i < kMaxImageSize; ++i) {
    input->data.int8[i] = g_sample_input_data[i];
  }
  if (interpreter->Invoke() != kTfLiteOk) {
    MicroPrintf("Invoke failed.");
    return;
  }

  const TfLiteTensor* output = interpreter->output(0);
  int top = 0;
  bool matches_host = true;
  for (int i = 0; i < kOutputSize; ++i) {
    if (output->data.int8[i] > output->data.int8[top]) top = i;
    if (output->data.int8[i] != g_sample_expected_output[i]) matches_host = false;
  }
  // Dequantized score: (q - zero_point) * scale; for a softmax output, a probability.
  const float score = (output->data.int8[top] - kOutputZeroPoint) * kOutputScale;
  const char* label = top < kCategoryCount ? kCategoryLabels[top] : "?";
  MicroPrintf("Top class %d (%s), score %d/1000; true class %d; output %s the host's TFLM output.", top, label,
              static_cast<int>(score * 1000), kSampleLabel, matches_host ? "matches" : "DIFFERS FROM");
}
