/* int8 MAX_POOL_2D, four channels at a time.

   CMSIS-NN's max pool costs about 90 instructions per output on a Cortex-M4
   for ShuffleNet's 3x3 / 2 pool over 12 channels. Here each output pixel takes
   the window's input words four channels at a time: on DSP cores one SSUB8
   and one SEL per word and window position (a per-byte signed max), then the
   activation's bounds the same way; with MVE, 16 channels at a time (VMAX).
   The result is TFLM's reference max pool,
   byte for byte: the max over the window clipped to the input, then clamped.

   Handled: int8 input and output (TFLM's PoolingPrepare checks that they are
   quantized alike). Everything else (float, int16) goes to the stock MAX_POOL_2D. */

#include <cstdint>
#include <cstring>
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#endif

#include "kernel_common.h"
#include "shufflenet_kernels.h"
#include "tensorflow/lite/c/builtin_op_data.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/kernels/pooling.h"
#include "tensorflow/lite/micro/micro_context.h"

#if defined(__ARM_FEATURE_MVE) && defined(CMSIS_NN)
#include <arm_mve.h>
#define KS_MAX_POOL_MVE 1
#endif

namespace keras_shufflenet {
namespace {

struct OpData {
  tflite::OpDataPooling pooling;  // First: TFLM's PoolingPrepare fills it through node->user_data.
  bool handled;                   // false: the stock kernel runs this node.
  void* stock_data;
};

const TFLMRegistration& Stock() {
  static const TFLMRegistration stock = tflite::Register_MAX_POOL_2D();
  return stock;
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  auto* data = static_cast<OpData*>(node->user_data);
  tflite::MicroContext* micro_context = tflite::GetMicroContext(context);
  TfLiteTensor* input = micro_context->AllocateTempInputTensor(node, tflite::kPoolingInputTensor);
  TfLiteTensor* output = micro_context->AllocateTempOutputTensor(node, tflite::kPoolingOutputTensor);
  TF_LITE_ENSURE(context, input != nullptr && output != nullptr);
  data->handled = input->type == kTfLiteInt8 && output->type == kTfLiteInt8 && input->dims->size == 4 &&
                  output->dims->size == 4;
  micro_context->DeallocateTempTfLiteTensor(input);
  micro_context->DeallocateTempTfLiteTensor(output);
  // TFLM's own checks and parameters (padding, activation range, same quantization).
  if (data->handled) return tflite::PoolingPrepare(context, node);
  return PrepareStock(Stock(), &data->stock_data, context, node);
}

// The signed per-byte max of two words of four int8 values.
inline uint32_t Max4(uint32_t a, uint32_t b) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  __ssub8(a, b);  // Sets each byte's GE flag where a >= b...
  return __sel(a, b);  // ...and takes that byte from a, else from b.
#else
  uint32_t result = 0;
  for (int i = 0; i < 32; i += 8) {
    const int8_t x = static_cast<int8_t>(a >> i), y = static_cast<int8_t>(b >> i);
    result |= static_cast<uint32_t>(static_cast<uint8_t>(x > y ? x : y)) << i;
  }
  return result;
#endif
}

inline uint32_t Min4(uint32_t a, uint32_t b) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  __ssub8(a, b);
  return __sel(b, a);
#else
  uint32_t result = 0;
  for (int i = 0; i < 32; i += 8) {
    const int8_t x = static_cast<int8_t>(a >> i), y = static_cast<int8_t>(b >> i);
    result |= static_cast<uint32_t>(static_cast<uint8_t>(x < y ? x : y)) << i;
  }
  return result;
#endif
}

inline uint32_t Splat(int32_t value) { return 0x01010101u * static_cast<uint8_t>(value); }

TfLiteStatus Invoke(TfLiteContext* context, TfLiteNode* node) {
  const auto* data = static_cast<const OpData*>(node->user_data);
  if (!data->handled) return InvokeStock(Stock(), data->stock_data, context, node);
  const auto* params = static_cast<const TfLitePoolParams*>(node->builtin_data);
  const TfLiteEvalTensor* input = tflite::micro::GetEvalInput(context, node, tflite::kPoolingInputTensor);
  TfLiteEvalTensor* output = tflite::micro::GetEvalOutput(context, node, tflite::kPoolingOutputTensor);
  const int batches = input->dims->data[0];
  const int in_height = input->dims->data[1], in_width = input->dims->data[2];
  const int out_height = output->dims->data[1], out_width = output->dims->data[2];
  const int channels = input->dims->data[3];
  const int words = channels / 4;
  const uint32_t low = Splat(data->pooling.activation_min), high = Splat(data->pooling.activation_max);
  const int8_t* in = tflite::micro::GetTensorData<int8_t>(input);
  int8_t* out = tflite::micro::GetTensorData<int8_t>(output);
  for (int batch = 0; batch < batches; ++batch) {
    const int8_t* image = in + batch * in_height * in_width * channels;
    for (int out_y = 0; out_y < out_height; ++out_y) {
      const int y_origin = out_y * params->stride_height - data->pooling.padding.height;
      const int y_start = y_origin < 0 ? 0 : y_origin;
      const int y_end = y_origin + params->filter_height < in_height ? y_origin + params->filter_height : in_height;
      for (int out_x = 0; out_x < out_width; ++out_x) {
        const int x_origin = out_x * params->stride_width - data->pooling.padding.width;
        const int x_start = x_origin < 0 ? 0 : x_origin;
        const int x_end = x_origin + params->filter_width < in_width ? x_origin + params->filter_width : in_width;
#if defined(KS_MAX_POOL_MVE)
        // With MVE: 16 channels at a time, the last ones tail-predicated.
        for (int channel = 0; channel < channels; channel += 16) {
          const mve_pred16_t lanes = vctp8q(static_cast<uint32_t>(channels - channel));
          int8x16_t max = vdupq_n_s8(-128);
          for (int y = y_start; y < y_end; ++y) {
            const int8_t* row = image + (y * in_width) * channels + channel;
            for (int x = x_start; x < x_end; ++x) max = vmaxq_s8(max, vldrbq_z_s8(row + x * channels, lanes));
          }
          max = vminq_s8(vmaxq_s8(max, vdupq_n_s8(static_cast<int8_t>(data->pooling.activation_min))),
                         vdupq_n_s8(static_cast<int8_t>(data->pooling.activation_max)));
          vstrbq_p_s8(out + channel, max, lanes);
        }
        out += channels;
        continue;
#endif
        for (int word = 0; word < words; ++word) {
          uint32_t max = 0x80808080u;  // -128 in every byte: an empty window gives the lower bound.
          for (int y = y_start; y < y_end; ++y) {
            const int8_t* row = image + (y * in_width) * channels + 4 * word;
            for (int x = x_start; x < x_end; ++x) {
              uint32_t value;
              std::memcpy(&value, row + x * channels, sizeof(value));
              max = Max4(value, max);
            }
          }
          max = Min4(Max4(max, low), high);
          std::memcpy(out + 4 * word, &max, sizeof(max));
        }
        for (int channel = 4 * words; channel < channels; ++channel) {
          int32_t max = -128;
          for (int y = y_start; y < y_end; ++y) {
            for (int x = x_start; x < x_end; ++x) {
              const int32_t value = image[(y * in_width + x) * channels + channel];
              max = value > max ? value : max;
            }
          }
          max = max < data->pooling.activation_min ? data->pooling.activation_min : max;
          out[channel] = static_cast<int8_t>(max > data->pooling.activation_max ? data->pooling.activation_max : max);
        }
        out += channels;
      }
    }
  }
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_MAX_POOL_2D() {
  return ProjectRegistration(Stock(), InitNodeData<OpData>, Prepare, Invoke);
}

}  // namespace keras_shufflenet
