/* int8 CONV_2D for grouped 1x1 convolutions and for stems.

   CMSIS-NN takes its 1x1 fast path only when the input channels equal the
   filter's, so every grouped 1x1 convolution (ShuffleNet's pointwise group
   convolutions) falls to its generic kernel: an im2col copy and an s8->s16
   widening per pixel and group. Here each group is one GEMM over the pixels,
   reading the group's input channels in place (row stride: all input
   channels) and writing its output channels in place (row stride: all output
   channels): no im2col copies.
   - Cortex-M with DSP (M4, M7): 2 pixels x 2 output channels at a time, 4
     MACs per SMLAD pair. Each channel pair's filter rows are widened to
     halfwords once per Invoke (a scratch buffer of 4 bytes per input column
     of the group), and the input offset enters once per channel, as
     offset * sum(filter row): 16 instructions per 16 MACs inside the loop.
   - Cortex-M with MVE (M55): CMSIS-NN's arm_nn_mat_mult_nt_t_s8 per group,
     which honours both row strides there.
   - Elsewhere: the same loops in portable C.
   Without MVE, an ungrouped conv whose filter window holds at most 128 values
   (a stem over an RGB image: 3x3x3) runs the same GEMM over im2col rows built for 16
   output pixels at a time (2 KiB of scratch); a tap outside the image holds
   the input's zero point, so it adds nothing, as TFLM skips it.

   Handled: int8 input, filter and output, int32 or no bias, weights stored
   uncompressed, and either groups > 1 with a 1x1 filter, stride 1 and at least
   8 pixels, or (without MVE) one group and a window of at most 128 values that
   is not 1x1 with stride 1. Everything else (ungrouped 1x1, which CMSIS-NN's fast path
   serves; deeper windows; int4 weights; int16; float) goes to the stock
   CONV_2D. */

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
constexpr bool kMve = true;
#elif defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define KS_CONV_DSP 1
constexpr bool kMve = false;
#else
constexpr bool kMve = false;
#endif

namespace keras_shufflenet {
namespace {

// How a node runs: see the file's comment.
enum class Path : uint8_t { kStock, kGrouped1x1, kIm2col };

// Output pixels whose im2col rows are built at a time, and the longest row
// (filter height x width x input channels, padded to 4) taken: 2 KiB of scratch.
constexpr int kIm2colPixels = 16;
constexpr int kIm2colMaxDepth = 128;
// Fewer pixels than this leave too few to share each channel pair's widened filter rows.
constexpr int kGroupedMinPixels = 8;

struct OpData {
  tflite::OpDataConv conv;   // TFLM's own parameters, from CalculateOpDataConv.
  int widened_buffer_index;  // Scratch for two widened filter rows (DSP path), or -1.
  int im2col_buffer_index;   // Scratch for kIm2colPixels im2col rows, or -1.
  Path path;
  void* stock_data;
};

const TFLMRegistration& Stock() {
  static const TFLMRegistration stock = tflite::Register_CONV_2D();
  return stock;
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
  uint32_t* widened;  // Scratch for two filter rows widened to halfwords (DSP path), or nullptr.
  const int8_t* input_end;  // One past the input tensor: no read goes beyond it.
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

#if !defined(KS_CONV_MVE)  // The DSP and portable GEMM; with MVE, CMSIS-NN's.
// The dot products of two input rows with two filter rows, without the input
// offset (the caller adds offset * sum(filter row) once per channel).
inline void Dot2x2(int depth, const int8_t* in0, const int8_t* in1, const int8_t* w0, const int8_t* w1,
                   const uint32_t* widened, bool whole_word_ok, int32_t& acc00, int32_t& acc01, int32_t& acc10,
                   int32_t& acc11) {
  int k = 0;
#if defined(KS_CONV_DSP)
  // Per 4 columns: two input words widened here, and the two filter rows'
  // halfword pairs already widened by WidenFilterPair: 16 instructions per 16
  // MACs. Written out because GCC spills this loop's 14 live registers.
  // With whole_word_ok the last 1 to 3 columns are read as a whole word: the
  // filter's padding is zero, so the input bytes beyond the group (still inside
  // the tensor) add nothing.
  const int padded_depth = whole_word_ok ? (depth + 3) & ~3 : depth & ~3;
  if (padded_depth > 0) {
    int chunks = padded_depth >> 2;
    const int8_t* a0_pointer = in0;
    const int8_t* a1_pointer = in1;
    const uint32_t* w_pointer = widened;
    uint32_t a0, a0_odd, a1, a1_odd, w_even, w_odd;
    __asm volatile(
        "1:\n\t"
        "ldr %[a0], [%[a0p]], #4\n\t"
        "ldr %[a1], [%[a1p]], #4\n\t"
        "ldrd %[we], %[wo], [%[wp]], #8\n\t"
        "sxtb16 %[a0o], %[a0], ror #8\n\t"
        "sxtb16 %[a0], %[a0]\n\t"
        "sxtb16 %[a1o], %[a1], ror #8\n\t"
        "sxtb16 %[a1], %[a1]\n\t"
        "smlad %[acc00], %[a0], %[we], %[acc00]\n\t"
        "smlad %[acc00], %[a0o], %[wo], %[acc00]\n\t"
        "smlad %[acc10], %[a1], %[we], %[acc10]\n\t"
        "smlad %[acc10], %[a1o], %[wo], %[acc10]\n\t"
        "ldrd %[we], %[wo], [%[wp]], #8\n\t"
        "smlad %[acc01], %[a0], %[we], %[acc01]\n\t"
        "smlad %[acc01], %[a0o], %[wo], %[acc01]\n\t"
        "smlad %[acc11], %[a1], %[we], %[acc11]\n\t"
        "smlad %[acc11], %[a1o], %[wo], %[acc11]\n\t"
        "subs %[chunks], %[chunks], #1\n\t"
        "bne 1b"
        : [acc00] "+r"(acc00), [acc01] "+r"(acc01), [acc10] "+r"(acc10), [acc11] "+r"(acc11),
          [a0p] "+r"(a0_pointer), [a1p] "+r"(a1_pointer), [wp] "+r"(w_pointer), [chunks] "+r"(chunks),
          [a0] "=&r"(a0), [a0o] "=&r"(a0_odd), [a1] "=&r"(a1), [a1o] "=&r"(a1_odd), [we] "=&r"(w_even),
          [wo] "=&r"(w_odd)
        :
        : "cc", "memory");
    k = padded_depth;
  }
#endif
  for (; k < depth; ++k) {
    acc00 += in0[k] * w0[k];
    acc01 += in0[k] * w1[k];
    acc10 += in1[k] * w0[k];
    acc11 += in1[k] * w1[k];
  }
}

#if defined(KS_CONV_DSP)
// 1 to 3 bytes as the low bytes of a word, the others zero.
inline uint32_t ReadPartial(const int8_t* bytes, int count) {
  uint32_t word = 0;
  for (int i = 0; i < count; ++i) word |= static_cast<uint32_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  return word;
}

// Widens two filter rows to halfword pairs in SMLAD's lane order, per 4
// columns [row 0 even, row 0 odd, row 1 even, row 1 odd], the last columns
// zero-padded to 4, once per channel pair and Invoke; returns the rows' sums.
inline void WidenFilterPair(const int8_t* w0, const int8_t* w1, int depth, uint32_t* widened, int32_t& sum0,
                            int32_t& sum1) {
  constexpr uint32_t kOnes = 0x00010001;
  sum0 = sum1 = 0;
  for (int k = 0; k < depth; k += 4) {
    const bool whole = k + 4 <= depth;
    const uint32_t b0 = whole ? Read4(w0 + k) : ReadPartial(w0 + k, depth - k);
    const uint32_t b1 = whole ? Read4(w1 + k) : ReadPartial(w1 + k, depth - k);
    widened[0] = __sxtb16(b0);
    widened[1] = SignExtendOdd(b0);
    widened[2] = __sxtb16(b1);
    widened[3] = SignExtendOdd(b1);
    sum0 = __smlad(widened[0], kOnes, __smlad(widened[1], kOnes, sum0));
    sum1 = __smlad(widened[2], kOnes, __smlad(widened[3], kOnes, sum1));
    widened += 4;
  }
}
#endif

// bias + input offset * the sum of the channel's filter row: the part of every
// output of the channel that does not depend on the input. `first` columns are
// already summed in `sum`.
inline int32_t ChannelConstant(const GroupGemm& gemm, int channel, int first, int32_t sum) {
  const int8_t* w = gemm.filter + channel * gemm.depth;
  for (int k = first; k < gemm.depth; ++k) sum += w[k];
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

// kLower: the activation's lower bound lies above -128 (a fused ReLU); kUpper:
// its upper bound lies below 127 (ReLU6). Saturating to int8 first is one
// instruction, and it is all the clamping an op without activation needs.
template <bool kFast, bool kLower, bool kUpper>
inline int8_t Output(int32_t acc, const Channel& channel, const OutputRange& range) {
  int32_t value = (kFast ? RequantizeFast(acc, channel.fast) : Requantize(acc, channel.multiplier, channel.shift)) +
                  range.offset;
#if defined(KS_CONV_DSP)
  value = __ssat(value, 8);
#else
  value = value < -128 ? -128 : value > 127 ? 127 : value;
#endif
  if (kLower) value = value < range.min ? range.min : value;
  if (kUpper) value = value > range.max ? range.max : value;
  return static_cast<int8_t>(value);
}

// Two channels (or one, given twice, with `channel_pair` false) over every
// pixel, two pixels at a time; an odd last pixel is paired with itself and
// its duplicate result is written to a dummy byte. Everything arrives by
// value: the int8 stores may alias any memory, so a field read through a
// pointer would be read again after each store.
template <bool kFast, bool kLower, bool kUpper>
void RunChannelPair(const Channel c0, const Channel c1, bool channel_pair, const uint32_t* widened,
                    const int8_t* input, const int8_t* input_end, int input_stride, int8_t* output, int output_stride,
                    int pixels, int depth, const OutputRange range) {
  int8_t discard[2];
  for (int p = 0; p < pixels; p += 2) {
    const bool pair = p + 1 < pixels;
    const int8_t* in1 = pair ? input + input_stride : input;
    int8_t* out1 = pair ? output + output_stride : discard;
    int32_t acc00 = c0.constant, acc01 = c1.constant, acc10 = c0.constant, acc11 = c1.constant;
    // The padded last word of pixel p + 1 must end inside the tensor.
    const bool whole_word_ok = in1 + ((depth + 3) & ~3) <= input_end;
    Dot2x2(depth, input, in1, c0.filter, c1.filter, widened, whole_word_ok, acc00, acc01, acc10, acc11);
    output[0] = Output<kFast, kLower, kUpper>(acc00, c0, range);
    out1[0] = Output<kFast, kLower, kUpper>(acc10, c0, range);
    const int8_t value01 = Output<kFast, kLower, kUpper>(acc01, c1, range);
    const int8_t value11 = Output<kFast, kLower, kUpper>(acc11, c1, range);
    if (channel_pair) {
      output[1] = value01;
      out1[1] = value11;
    }
    input += 2 * input_stride;
    output += 2 * output_stride;
  }
}

// The variants worth their flash: fast requantization with no activation or
// with a ReLU (ShuffleNet's); one for any other parameters (ReLU6 included).
using RunChannelPairFunction = void (*)(Channel, Channel, bool, const uint32_t*, const int8_t*, const int8_t*, int,
                                        int8_t*, int, int, int, OutputRange);
RunChannelPairFunction ChooseRunChannelPair(bool fast, const OutputRange& range) {
  if (!fast || range.max < 127) return RunChannelPair<false, true, true>;
  return range.min > -128 ? RunChannelPair<true, true, false> : RunChannelPair<true, false, false>;
}

Channel MakeChannel(const GroupGemm& gemm, int channel, int summed_columns, int32_t sum) {
  const int32_t multiplier = gemm.multiplier[channel];
  const int shift = gemm.shift[channel];
  const bool fast = IsFastRequantizable(multiplier, shift);
  return {gemm.filter + channel * gemm.depth, ChannelConstant(gemm, channel, summed_columns, sum), multiplier, shift,
          fast ? MakeFastRequantizer(multiplier, shift) : FastRequantizer{0, 0, 0}};
}

#endif  // !defined(KS_CONV_MVE)

void RunGroupGemm(const GroupGemm& gemm) {
#if defined(KS_CONV_MVE)
  arm_nn_mat_mult_nt_t_s8(gemm.input, gemm.filter, gemm.bias, gemm.output, gemm.multiplier, gemm.shift, gemm.pixels,
                          gemm.channels, gemm.depth, gemm.input_offset, gemm.output_offset, gemm.activation_min,
                          gemm.activation_max, gemm.output_stride, gemm.input_stride);
#else
  const OutputRange range = {gemm.output_offset, gemm.activation_min, gemm.activation_max};
  for (int c = 0; c < gemm.channels; c += 2) {
    const bool channel_pair = c + 1 < gemm.channels;
    const int c1 = channel_pair ? c + 1 : c;
    int32_t sum0 = 0, sum1 = 0;
    int summed_columns = 0;
#if defined(KS_CONV_DSP)
    WidenFilterPair(gemm.filter + c * gemm.depth, gemm.filter + c1 * gemm.depth, gemm.depth, gemm.widened, sum0,
                    sum1);
    summed_columns = gemm.depth;
#endif
    const Channel channel0 = MakeChannel(gemm, c, summed_columns, sum0);
    const Channel channel1 = MakeChannel(gemm, c1, summed_columns, sum1);
    const bool fast = IsFastRequantizable(channel0.multiplier, channel0.shift) &&
                      IsFastRequantizable(channel1.multiplier, channel1.shift);
    ChooseRunChannelPair(fast, range)(channel0, channel1, channel_pair, gemm.widened, gemm.input, gemm.input_end,
                             gemm.input_stride, gemm.output + c, gemm.output_stride, gemm.pixels, gemm.depth, range);
  }
#endif
}

// How this node runs: see the file's comment.
Path ChoosePath(TfLiteContext* context, TfLiteNode* node, const TfLiteConvParams& params, const TfLiteTensor* input,
                const TfLiteTensor* filter, const TfLiteTensor* bias, const TfLiteTensor* output) {
  if (input->type != kTfLiteInt8 || filter->type != kTfLiteInt8 || output->type != kTfLiteInt8) return Path::kStock;
  if (bias != nullptr && bias->type != kTfLiteInt32) return Path::kStock;
  if (input->dims->size != 4 || filter->dims->size != 4 || output->dims->size != 4) return Path::kStock;
#ifdef USE_TFLM_COMPRESSION
  // Weights that TFLM decompresses inside the kernel: the stock kernel reads them.
  tflite::MicroContext* micro_context = tflite::GetMicroContext(context);
  if (micro_context->IsTensorCompressed(node, tflite::kConvWeightsTensor) ||
      micro_context->IsTensorCompressed(node, tflite::kConvBiasTensor)) {
    return Path::kStock;
  }
#endif
  const int input_channels = input->dims->data[3];
  const int filter_depth = filter->dims->data[3];
  const int output_channels = output->dims->data[3];
  if (filter_depth <= 0 || input_channels % filter_depth != 0 || output_channels != filter->dims->data[0]) {
    return Path::kStock;
  }
  const int groups = input_channels / filter_depth;
  const bool pointwise = filter->dims->data[1] == 1 && filter->dims->data[2] == 1 && params.stride_height == 1 &&
                         params.stride_width == 1;
  if (groups > 1) {
    const int pixels = input->dims->data[0] * input->dims->data[1] * input->dims->data[2];
    const bool same_size = input->dims->data[1] == output->dims->data[1] && input->dims->data[2] == output->dims->data[2];
    return pointwise && same_size && output_channels % groups == 0 && pixels >= kGroupedMinPixels ? Path::kGrouped1x1
                                                                                                   : Path::kStock;
  }
  // Ungrouped: 1x1 with stride 1 takes CMSIS-NN's own fast path; other
  // filters with short im2col rows (a stem over 1 to 4 channels) come here,
  // except with MVE, where CMSIS-NN's own im2col kernel is faster.
  const int depth = filter->dims->data[1] * filter->dims->data[2] * filter_depth;
  return !kMve && !pointwise && ((depth + 3) & ~3) <= kIm2colMaxDepth ? Path::kIm2col : Path::kStock;
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
  data->path = ChoosePath(context, node, params, input, filter, bias, output);
  TfLiteStatus status = kTfLiteOk;
  if (data->path != Path::kStock) {
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
      status = tflite::CalculateOpDataConv(context, node, params, input->dims->data[2], input->dims->data[1],
                                           filter->dims->data[2], filter->dims->data[1], output->dims->data[2],
                                           output->dims->data[1], input->type, &data->conv);
    }
    // A GEMM row: one group's input channels, or one im2col row.
    const int row = data->path == Path::kIm2col
                        ? filter->dims->data[1] * filter->dims->data[2] * filter->dims->data[3]
                        : filter->dims->data[3];
    const int padded_row = (row + 3) & ~3;
    data->widened_buffer_index = -1;
    data->im2col_buffer_index = -1;
#if defined(KS_CONV_DSP)
    // Two filter rows as halfwords, padded to 4 columns: 4 bytes per column
    // (640 B for ShuffleNet 0.5x's deepest group).
    if (status == kTfLiteOk) {
      status = context->RequestScratchBufferInArena(context, padded_row * 4, &data->widened_buffer_index);
    }
#endif
    if (status == kTfLiteOk && data->path == Path::kIm2col) {
      status = context->RequestScratchBufferInArena(context, kIm2colPixels * padded_row, &data->im2col_buffer_index);
    }
  }
  micro_context->DeallocateTempTfLiteTensor(input);
  micro_context->DeallocateTempTfLiteTensor(filter);
  if (bias != nullptr) micro_context->DeallocateTempTfLiteTensor(bias);
  micro_context->DeallocateTempTfLiteTensor(output);
  if (status != kTfLiteOk || data->path != Path::kStock) return status;
  return PrepareStock(Stock(), &data->stock_data, context, node);
}

// The im2col rows of output pixels [first, first + count): each row holds the
// filter window's inputs (height x width x channels), and the input's zero
// point where the window leaves the image, which then adds nothing, as in
// TFLM's reference kernel that skips those taps.
void FillIm2col(const TfLiteEvalTensor* input, const TfLiteEvalTensor* filter, const TfLiteConvParams& params,
                const tflite::OpDataConv& conv, int out_width, int out_pixels_per_image, int first, int count,
                int row_bytes, int8_t* rows) {
  const int in_height = input->dims->data[1], in_width = input->dims->data[2], channels = input->dims->data[3];
  const int filter_height = filter->dims->data[1], filter_width = filter->dims->data[2];
  const int8_t* in = tflite::micro::GetTensorData<int8_t>(input);
  const int8_t zero = static_cast<int8_t>(conv.input_zero_point);
  for (int i = 0; i < count; ++i) {
    const int pixel = first + i;
    const int batch = pixel / out_pixels_per_image;
    const int out_y = (pixel % out_pixels_per_image) / out_width, out_x = pixel % out_width;
    const int8_t* image = in + batch * in_height * in_width * channels;
    int8_t* row = rows + i * row_bytes;
    for (int fy = 0; fy < filter_height; ++fy) {
      const int y = out_y * params.stride_height - conv.padding.height + fy * params.dilation_height_factor;
      for (int fx = 0; fx < filter_width; ++fx) {
        const int x = out_x * params.stride_width - conv.padding.width + fx * params.dilation_width_factor;
        const bool inside = y >= 0 && y < in_height && x >= 0 && x < in_width;
        const int8_t* source = image + (y * in_width + x) * channels;
        for (int c = 0; c < channels; ++c) *row++ = inside ? source[c] : zero;
      }
    }
    for (int8_t* end = rows + (i + 1) * row_bytes; row < end;) *row++ = zero;  // The padding to 4 bytes.
  }
}

// The GEMM's parameters that come from the node's quantization.
GroupGemm QuantizedGemm(TfLiteContext* context, const OpData& data) {
  GroupGemm gemm;
  gemm.input_offset = -data.conv.input_zero_point;
  gemm.output_offset = data.conv.output_zero_point;
  gemm.activation_min = data.conv.output_activation_min;
  gemm.activation_max = data.conv.output_activation_max;
  gemm.widened = data.widened_buffer_index < 0
                     ? nullptr
                     : static_cast<uint32_t*>(context->GetScratchBuffer(context, data.widened_buffer_index));
  return gemm;
}

// A conv as GEMMs over blocks of kIm2colPixels im2col rows.
TfLiteStatus InvokeIm2col(TfLiteContext* context, TfLiteNode* node, const OpData& data) {
  const auto& params = *static_cast<const TfLiteConvParams*>(node->builtin_data);
  const TfLiteEvalTensor* input = tflite::micro::GetEvalInput(context, node, tflite::kConvInputTensor);
  const TfLiteEvalTensor* filter = tflite::micro::GetEvalInput(context, node, tflite::kConvWeightsTensor);
  const TfLiteEvalTensor* bias = tflite::micro::GetEvalInput(context, node, tflite::kConvBiasTensor);
  TfLiteEvalTensor* output = tflite::micro::GetEvalOutput(context, node, tflite::kConvOutputTensor);
  const int depth = filter->dims->data[1] * filter->dims->data[2] * filter->dims->data[3];
  const int row_bytes = (depth + 3) & ~3;
  const int out_width = output->dims->data[2];
  const int out_pixels_per_image = output->dims->data[1] * out_width;
  const int pixels = output->dims->data[0] * out_pixels_per_image;
  const int channels = output->dims->data[3];
  int8_t* rows = static_cast<int8_t*>(context->GetScratchBuffer(context, data.im2col_buffer_index));
  GroupGemm gemm = QuantizedGemm(context, data);
  gemm.input = rows;
  gemm.input_stride = row_bytes;
  gemm.filter = tflite::micro::GetTensorData<int8_t>(filter);
  gemm.bias = bias == nullptr ? nullptr : tflite::micro::GetTensorData<int32_t>(bias);
  gemm.multiplier = data.conv.per_channel_output_multiplier;
  gemm.shift = data.conv.per_channel_output_shift;
  gemm.output_stride = channels;
  gemm.channels = channels;
  gemm.depth = depth;
  for (int first = 0; first < pixels; first += kIm2colPixels) {
    const int count = pixels - first < kIm2colPixels ? pixels - first : kIm2colPixels;
    FillIm2col(input, filter, params, data.conv, out_width, out_pixels_per_image, first, count, row_bytes, rows);
    gemm.pixels = count;
    gemm.input_end = rows + count * row_bytes;
    gemm.output = tflite::micro::GetTensorData<int8_t>(output) + first * channels;
    RunGroupGemm(gemm);
  }
  return kTfLiteOk;
}

TfLiteStatus Invoke(TfLiteContext* context, TfLiteNode* node) {
  const auto* data = static_cast<const OpData*>(node->user_data);
  if (data->path == Path::kStock) return InvokeStock(Stock(), data->stock_data, context, node);
  if (data->path == Path::kIm2col) return InvokeIm2col(context, node, *data);
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
    GroupGemm gemm = QuantizedGemm(context, *data);
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
    gemm.input_end = input_data + tflite::micro::GetTensorShape(input).FlatSize();
    RunGroupGemm(gemm);
  }
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_CONV_2D() {
  return ProjectRegistration(Stock(), InitNodeData<OpData>, Prepare, Invoke);
}

}  // namespace keras_shufflenet
