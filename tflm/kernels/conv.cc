/* int8 grouped 1x1 CONV_2D with stride 1.

   CMSIS-NN takes its 1x1 fast path only when the input channels equal the
   filter's, so every grouped 1x1 convolution (ShuffleNet's pointwise group
   convolutions) falls to its generic kernel: an im2col copy and an s8->s16
   widening per pixel and group. Here each group is one GEMM over the pixels,
   reading the group's input channels in place (row stride: all input
   channels) and writing its output channels in place (row stride: all output
   channels): no copies, no scratch memory.
   - Cortex-M with DSP (M4, M7): 2 pixels x 2 output channels at a time, 4
     MACs per SMLAD pair; the input offset enters once per channel, as
     offset * sum(filter row), which frees a register in the inner loop.
   - Cortex-M with MVE (M55): CMSIS-NN's arm_nn_mat_mult_nt_t_s8 per group,
     which honours both row strides there.
   - Elsewhere: the same loops in portable C.

   Handled: int8 input, filter and output, a 1x1 filter, stride 1, groups > 1, int32 or no
   bias, weights stored uncompressed. Everything else (other filter sizes,
   strides, ungrouped, int4 weights, int16, float) goes to the stock CONV_2D. */

#include <cstdint>
#include <cstring>

#include "kernel_common.h"
#include "shufflenet_kernels.h"
#include "tensorflow/lite/c/builtin_op_data.h"
#include "tensorflow/lite/micro/kernels/conv.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/micro_context.h"
#include "tensorflow/lite/micro/micro_log.h"

#if defined(__ARM_FEATURE_MVE) && defined(CMSIS_NN)
#include "arm_nnsupportfunctions.h"
#define KS_CONV_MVE 1
#elif defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define KS_CONV_DSP 1
#endif

namespace keras_shufflenet {
namespace {

struct OpData {
  tflite::OpDataConv conv;  // TFLM's own parameters, from CalculateOpDataConv.
  bool handled;             // false: the stock kernel runs this node.
  void* stock_data;
};

const TFLMRegistration& Stock() {
  static const TFLMRegistration stock = tflite::Register_CONV_2D();
  return stock;
}

void* Init(TfLiteContext* context, const char* buffer, size_t length) {
  return context->AllocatePersistentBuffer(context, sizeof(OpData));
}

// One group's GEMM: output[p][c] = requantize(bias[c] + sum_k (input[p][k] + offset) * filter[c][k]).
struct GroupGemm {
  const int8_t* input;  // The group's first input channel of pixel 0.
  int input_stride;     // Bytes from one pixel's input to the next: all input channels.
  const int8_t* filter;  // [channels][depth]
  const int32_t* bias;   // [channels], or nullptr.
  const int32_t* multiplier;
  const int32_t* shift;
  int8_t* output;  // The group's first output channel of pixel 0.
  int output_stride;
  int pixels;
  int channels;
  int depth;
  int32_t input_offset;
  int32_t output_offset;
  int32_t activation_min;
  int32_t activation_max;
};

#if defined(KS_CONV_DSP)
inline uint32_t Read4(const int8_t* bytes) {
  uint32_t word;
  std::memcpy(&word, bytes, sizeof(word));  // One unaligned LDR on Cortex-M4/M7.
  return word;
}
// Bytes 1 and 3 of `word`, sign-extended to halfwords: one
// instruction with its rotation, which GCC does not always fold by itself.
inline uint32_t SignExtendOdd(uint32_t word) {
  uint32_t result;
  __asm("sxtb16 %0, %1, ror #8" : "=r"(result) : "r"(word));
  return result;
}
#endif

// The dot products of two input rows with two filter rows, without the input
// offset (the caller adds offset * sum(filter row) once per channel).
inline void Dot2x2(int depth, const int8_t* in0, const int8_t* in1, const int8_t* w0, const int8_t* w1,
                   int32_t& acc00, int32_t& acc01, int32_t& acc10, int32_t& acc11) {
  int k = 0;
#if defined(KS_CONV_DSP)
  for (; k + 4 <= depth; k += 4) {
    const uint32_t a0 = Read4(in0 + k);
    const uint32_t a1 = Read4(in1 + k);
    const uint32_t a0_even = __sxtb16(a0);
    const uint32_t a0_odd = SignExtendOdd(a0);
    const uint32_t a1_even = __sxtb16(a1);
    const uint32_t a1_odd = SignExtendOdd(a1);
    uint32_t b = Read4(w0 + k);
    uint32_t b_even = __sxtb16(b);
    uint32_t b_odd = SignExtendOdd(b);
    acc00 = __smlad(a0_even, b_even, __smlad(a0_odd, b_odd, acc00));
    acc10 = __smlad(a1_even, b_even, __smlad(a1_odd, b_odd, acc10));
    b = Read4(w1 + k);
    b_even = __sxtb16(b);
    b_odd = SignExtendOdd(b);
    acc01 = __smlad(a0_even, b_even, __smlad(a0_odd, b_odd, acc01));
    acc11 = __smlad(a1_even, b_even, __smlad(a1_odd, b_odd, acc11));
  }
#endif
  for (; k < depth; ++k) {
    acc00 += in0[k] * w0[k];
    acc01 += in0[k] * w1[k];
    acc10 += in1[k] * w0[k];
    acc11 += in1[k] * w1[k];
  }
}

// bias + input offset * the sum of the channel's filter row: the part of every
// output of the channel that does not depend on the input.
inline int32_t ChannelConstant(const GroupGemm& gemm, int channel) {
  const int8_t* w = gemm.filter + channel * gemm.depth;
  int32_t sum = 0;
  for (int k = 0; k < gemm.depth; ++k) sum += w[k];
  return (gemm.bias ? gemm.bias[channel] : 0) + gemm.input_offset * sum;
}

// The output range: the fused activation's bounds within int8.
struct OutputRange {
  int32_t offset;
  int32_t min;
  int32_t max;
};

// One output channel of the GEMM: its filter row, the part of its outputs that
// does not depend on the input, and its requantization (with the fast form
// where the parameters allow it).
struct Channel {
  const int8_t* filter;
  int32_t constant;
  int32_t multiplier;
  int shift;
  FastRequantizer fast;
};

template <bool kFast>
inline int8_t Output(int32_t acc, const Channel& channel, const OutputRange& range) {
  int32_t value = (kFast ? RequantizeFast(acc, channel.fast) : Requantize(acc, channel.multiplier, channel.shift)) +
                  range.offset;
  value = value < range.min ? range.min : value;
  value = value > range.max ? range.max : value;
  return static_cast<int8_t>(value);
}

// Two channels (or one, given twice, with `channel_pair` false) over every
// pixel, two pixels at a time; an odd last pixel is paired with itself and
// its duplicate result is written to a dummy byte. Everything arrives by
// value: the int8 stores may alias any memory, so a field read through a
// pointer would be read again after each store.
template <bool kFast>
void RunChannelPair(const Channel c0, const Channel c1, bool channel_pair, const int8_t* input, int input_stride,
                    int8_t* output, int output_stride, int pixels, int depth, const OutputRange range) {
  int8_t discard[2];
  for (int p = 0; p < pixels; p += 2) {
    const bool pair = p + 1 < pixels;
    const int8_t* in1 = pair ? input + input_stride : input;
    int8_t* out1 = pair ? output + output_stride : discard;
    int32_t acc00 = c0.constant, acc01 = c1.constant, acc10 = c0.constant, acc11 = c1.constant;
    Dot2x2(depth, input, in1, c0.filter, c1.filter, acc00, acc01, acc10, acc11);
    output[0] = Output<kFast>(acc00, c0, range);
    out1[0] = Output<kFast>(acc10, c0, range);
    const int8_t value01 = Output<kFast>(acc01, c1, range);
    const int8_t value11 = Output<kFast>(acc11, c1, range);
    if (channel_pair) {
      output[1] = value01;
      out1[1] = value11;
    }
    input += 2 * input_stride;
    output += 2 * output_stride;
  }
}

Channel MakeChannel(const GroupGemm& gemm, int channel) {
  const int32_t multiplier = gemm.multiplier[channel];
  const int shift = gemm.shift[channel];
  const bool fast = IsFastRequantizable(multiplier, shift);
  return {gemm.filter + channel * gemm.depth, ChannelConstant(gemm, channel), multiplier, shift,
          fast ? MakeFastRequantizer(multiplier, shift) : FastRequantizer{0, 0, 0}};
}

void RunGroupGemm(const GroupGemm& gemm) {
#if defined(KS_CONV_MVE)
  arm_nn_mat_mult_nt_t_s8(gemm.input, gemm.filter, gemm.bias, gemm.output, gemm.multiplier, gemm.shift, gemm.pixels,
                          gemm.channels, gemm.depth, gemm.input_offset, gemm.output_offset, gemm.activation_min,
                          gemm.activation_max, gemm.output_stride, gemm.input_stride);
#else
  const OutputRange range = {gemm.output_offset, gemm.activation_min, gemm.activation_max};
  for (int c = 0; c < gemm.channels; c += 2) {
    const bool channel_pair = c + 1 < gemm.channels;
    const Channel c0 = MakeChannel(gemm, c);
    const Channel c1 = channel_pair ? MakeChannel(gemm, c + 1) : c0;
    const bool fast = IsFastRequantizable(c0.multiplier, c0.shift) && IsFastRequantizable(c1.multiplier, c1.shift);
    (fast ? RunChannelPair<true> : RunChannelPair<false>)(c0, c1, channel_pair, gemm.input, gemm.input_stride,
                                                          gemm.output + c, gemm.output_stride, gemm.pixels,
                                                          gemm.depth, range);
  }
#endif
}

// Whether this kernel computes the node: see the file's comment.
bool Handles(TfLiteContext* context, TfLiteNode* node, const TfLiteConvParams& params, const TfLiteTensor* input,
             const TfLiteTensor* filter, const TfLiteTensor* bias, const TfLiteTensor* output) {
  if (input->type != kTfLiteInt8 || filter->type != kTfLiteInt8 || output->type != kTfLiteInt8) return false;
  if (bias != nullptr && bias->type != kTfLiteInt32) return false;
  if (input->dims->size != 4 || filter->dims->size != 4 || output->dims->size != 4) return false;
  if (filter->dims->data[1] != 1 || filter->dims->data[2] != 1) return false;
  if (params.stride_height != 1 || params.stride_width != 1) return false;
  const int input_channels = input->dims->data[3];
  const int filter_depth = filter->dims->data[3];
  const int output_channels = output->dims->data[3];
  // Ungrouped 1x1 convolutions take CMSIS-NN's own fast path, which is faster.
  if (filter_depth <= 0 || input_channels % filter_depth != 0 || input_channels == filter_depth) return false;
  if (output_channels != filter->dims->data[0] || output_channels % (input_channels / filter_depth) != 0) return false;
  for (int i = 0; i < 3; ++i) {
    if (input->dims->data[i] != output->dims->data[i]) return false;
  }
#ifdef USE_TFLM_COMPRESSION
  // Weights that TFLM decompresses inside the kernel: the stock kernel reads them.
  tflite::MicroContext* micro_context = tflite::GetMicroContext(context);
  if (micro_context->IsTensorCompressed(node, tflite::kConvWeightsTensor) ||
      micro_context->IsTensorCompressed(node, tflite::kConvBiasTensor)) {
    return false;
  }
#endif
  return true;
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  auto* data = static_cast<OpData*>(node->user_data);
  const auto& params = *static_cast<const TfLiteConvParams*>(node->builtin_data);
  tflite::MicroContext* micro_context = tflite::GetMicroContext(context);
  TfLiteTensor* input = micro_context->AllocateTempInputTensor(node, tflite::kConvInputTensor);
  TfLiteTensor* filter = micro_context->AllocateTempInputTensor(node, tflite::kConvWeightsTensor);
  TfLiteTensor* bias = micro_context->AllocateTempInputTensor(node, tflite::kConvBiasTensor);
  TfLiteTensor* output = micro_context->AllocateTempOutputTensor(node, tflite::kConvOutputTensor);
  TF_LITE_ENSURE(context, input != nullptr && filter != nullptr && output != nullptr);
  data->handled = Handles(context, node, params, input, filter, bias, output);
  TfLiteStatus status = kTfLiteOk;
  if (data->handled) {
    const int channels = output->dims->data[3];
    const auto* quantization = static_cast<const TfLiteAffineQuantization*>(filter->quantization.params);
    if (filter->quantization.type != kTfLiteAffineQuantization || quantization == nullptr ||
        quantization->scale == nullptr ||
        (quantization->scale->size != 1 && quantization->scale->size != channels)) {
      MicroPrintf("CONV_2D: the int8 filter needs one scale, or one per output channel (%d).", channels);
      status = kTfLiteError;
    }
    if (status == kTfLiteOk) {
      data->conv.per_channel_output_multiplier =
          static_cast<int32_t*>(context->AllocatePersistentBuffer(context, channels * sizeof(int32_t)));
      data->conv.per_channel_output_shift =
          static_cast<int32_t*>(context->AllocatePersistentBuffer(context, channels * sizeof(int32_t)));
      status = tflite::CalculateOpDataConv(context, node, params, input->dims->data[2], input->dims->data[1], 1, 1,
                                           output->dims->data[2], output->dims->data[1], input->type, &data->conv);
    }
  }
  micro_context->DeallocateTempTfLiteTensor(input);
  micro_context->DeallocateTempTfLiteTensor(filter);
  if (bias != nullptr) micro_context->DeallocateTempTfLiteTensor(bias);
  micro_context->DeallocateTempTfLiteTensor(output);
  if (status != kTfLiteOk || data->handled) return status;
  return PrepareStock(Stock(), &data->stock_data, context, node);
}

TfLiteStatus Invoke(TfLiteContext* context, TfLiteNode* node) {
  const auto* data = static_cast<const OpData*>(node->user_data);
  if (!data->handled) return InvokeStock(Stock(), data->stock_data, context, node);
  const TfLiteEvalTensor* input = tflite::micro::GetEvalInput(context, node, tflite::kConvInputTensor);
  const TfLiteEvalTensor* filter = tflite::micro::GetEvalInput(context, node, tflite::kConvWeightsTensor);
  const TfLiteEvalTensor* bias = tflite::micro::GetEvalInput(context, node, tflite::kConvBiasTensor);
  TfLiteEvalTensor* output = tflite::micro::GetEvalOutput(context, node, tflite::kConvOutputTensor);
  const int input_channels = input->dims->data[3];
  const int depth = filter->dims->data[3];
  const int output_channels = output->dims->data[3];
  const int groups = input_channels / depth;
  const int channels = output_channels / groups;
  const int8_t* input_data = tflite::micro::GetTensorData<int8_t>(input);
  const int8_t* filter_data = tflite::micro::GetTensorData<int8_t>(filter);
  const int32_t* bias_data = bias == nullptr ? nullptr : tflite::micro::GetTensorData<int32_t>(bias);
  int8_t* output_data = tflite::micro::GetTensorData<int8_t>(output);
  for (int group = 0; group < groups; ++group) {
    const int first_channel = group * channels;
    GroupGemm gemm;
    gemm.input = input_data + group * depth;
    gemm.input_stride = input_channels;
    gemm.filter = filter_data + first_channel * depth;
    gemm.bias = bias_data == nullptr ? nullptr : bias_data + first_channel;
    gemm.multiplier = data->conv.per_channel_output_multiplier + first_channel;
    gemm.shift = data->conv.per_channel_output_shift + first_channel;
    gemm.output = output_data + first_channel;
    gemm.output_stride = output_channels;
    gemm.pixels = input->dims->data[0] * input->dims->data[1] * input->dims->data[2];
    gemm.channels = channels;
    gemm.depth = depth;
    gemm.input_offset = -data->conv.input_zero_point;
    gemm.output_offset = data->conv.output_zero_point;
    gemm.activation_min = data->conv.output_activation_min;
    gemm.activation_max = data->conv.output_activation_max;
    RunGroupGemm(gemm);
  }
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_CONV_2D() {
  TFLMRegistration registration = Stock();
  registration.init = Init;
  registration.prepare = Prepare;
  registration.invoke = Invoke;
  return registration;
}

}  // namespace keras_shufflenet
