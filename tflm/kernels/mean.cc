/* int8 MEAN over height and width of a 4-D tensor: global average pooling.

   TFLM's reference MEAN walks the tensor with a general N-D index per element
   (about 160 instructions per element on a Cortex-M4). Here each channel's
   sum is a strided loop over the pixels, then TFLM's own rescaling:
   the multiplier of input scale / output scale, folded with 1 / (H * W) as
   reference_ops::QuantizedMeanOrSum folds it.

   Handled: int8 input and output, 4 dimensions, a constant int32 axis tensor
   holding {1, 2} in either order. Everything else goes to the stock MEAN. */

#include <cmath>
#include <cstdint>

#include "kernel_common.h"
#include "shufflenet_kernels.h"
#include "tensorflow/lite/c/builtin_op_data.h"
#include "tensorflow/lite/kernels/internal/quantization_util.h"
#include "tensorflow/lite/kernels/kernel_util.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/kernels/reduce.h"
#include "tensorflow/lite/micro/micro_context.h"
#include "tensorflow/lite/micro/micro_log.h"

namespace keras_shufflenet {
namespace {

struct OpData {
  int32_t multiplier;  // input scale / output scale / (H * W), as TFLM computes it.
  int shift;
  int32_t input_zero_point;
  int32_t output_zero_point;
  bool handled;  // false: the stock kernel runs this node.
  void* stock_data;
};

const TFLMRegistration& Stock() {
  static const TFLMRegistration stock = tflite::Register_MEAN();
  return stock;
}

bool OverHeightAndWidth(const TfLiteTensor* input, const TfLiteTensor* axis, const TfLiteTensor* output) {
  if (input->type != kTfLiteInt8 || output->type != kTfLiteInt8 || input->dims->size != 4) return false;
  if (axis->type != kTfLiteInt32 || !tflite::IsConstantTensor(axis) || tflite::NumElements(axis) != 2) return false;
  const int32_t* axes = tflite::GetTensorData<int32_t>(axis);
  const bool height_width = (axes[0] == 1 && axes[1] == 2) || (axes[0] == 2 && axes[1] == 1);
  return height_width && tflite::NumElements(output) == input->dims->data[0] * input->dims->data[3] &&
         input->dims->data[1] * input->dims->data[2] > 0;
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  auto* data = static_cast<OpData*>(node->user_data);
  tflite::MicroContext* micro_context = tflite::GetMicroContext(context);
  TfLiteTensor* input = micro_context->AllocateTempInputTensor(node, 0);
  TfLiteTensor* axis = micro_context->AllocateTempInputTensor(node, 1);
  TfLiteTensor* output = micro_context->AllocateTempOutputTensor(node, 0);
  TF_LITE_ENSURE(context, input != nullptr && axis != nullptr && output != nullptr);
  data->handled = OverHeightAndWidth(input, axis, output);
  TfLiteStatus status = kTfLiteOk;
  if (data->handled) {
    const double input_scale = input->params.scale;
    const double output_scale = output->params.scale;
    if (!(input_scale > 0 && output_scale > 0 && std::isfinite(input_scale / output_scale))) {
      MicroPrintf("MEAN: the input and output scales must be positive and finite, not %g and %g.", input_scale,
                  output_scale);
      status = kTfLiteError;
    } else {
      int32_t multiplier;
      int shift;
      tflite::QuantizeMultiplier(input_scale / output_scale, &multiplier, &shift);
      // reference_ops::QuantizedMeanOrSum's folding of 1 / count, to the bit.
      const int64_t count = static_cast<int64_t>(input->dims->data[1]) * input->dims->data[2];
      int count_shift = 63 - tflite::CountLeadingZeros(static_cast<uint64_t>(count));
      count_shift = count_shift < 32 ? count_shift : 32;
      count_shift = count_shift < 31 + shift ? count_shift : 31 + shift;
      data->multiplier = static_cast<int32_t>((static_cast<int64_t>(multiplier) << count_shift) / count);
      data->shift = shift - count_shift;
      data->input_zero_point = input->params.zero_point;
      data->output_zero_point = output->params.zero_point;
    }
  }
  micro_context->DeallocateTempTfLiteTensor(input);
  micro_context->DeallocateTempTfLiteTensor(axis);
  micro_context->DeallocateTempTfLiteTensor(output);
  if (status != kTfLiteOk || data->handled) return status;
  return PrepareStock(Stock(), &data->stock_data, context, node);
}

TfLiteStatus Invoke(TfLiteContext* context, TfLiteNode* node) {
  const auto* data = static_cast<const OpData*>(node->user_data);
  if (!data->handled) return InvokeStock(Stock(), data->stock_data, context, node);
  const TfLiteEvalTensor* input = tflite::micro::GetEvalInput(context, node, 0);
  TfLiteEvalTensor* output = tflite::micro::GetEvalOutput(context, node, 0);
  const int batches = input->dims->data[0];
  const int pixels = input->dims->data[1] * input->dims->data[2];
  const int channels = input->dims->data[3];
  const int32_t zero_point_sum = data->input_zero_point * pixels;
  const int8_t* in = tflite::micro::GetTensorData<int8_t>(input);
  int8_t* out = tflite::micro::GetTensorData<int8_t>(output);
  for (int batch = 0; batch < batches; ++batch) {
    for (int channel = 0; channel < channels; ++channel) {
      const int8_t* source = in + channel;
      int32_t sum = 0;
      for (int pixel = 0; pixel < pixels; ++pixel) sum += source[pixel * channels];
      int32_t value = Requantize(sum - zero_point_sum, data->multiplier, data->shift) + data->output_zero_point;
      value = value < -128 ? -128 : value;
      value = value > 127 ? 127 : value;
      *out++ = static_cast<int8_t>(value);
    }
    in += pixels * channels;
  }
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_MEAN() {
  return ProjectRegistration(Stock(), InitNodeData<OpData>, Prepare, Invoke);
}

}  // namespace keras_shufflenet
