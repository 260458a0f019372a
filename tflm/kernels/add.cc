/* int8 ADD with per-input tables.

   TFLM's int8 ADD rescales each input on its own before summing:
     x' = MultiplyByQuantizedMultiplierSmallerThanOneExp((x + offset) << 20, multiplier, shift)
   x' depends on one int8 value only, so it is read from a 256-entry table per
   input, filled at each Invoke into one 2 KiB scratch buffer that later
   operators reuse. Only the sum's requantization is computed per element:
   about 25 instructions per element on a Cortex-M4 against CMSIS-NN's 81,
   bit for bit the same result.

   With MVE (Cortex-M55) four elements go at a time: two gathers from the
   tables, then CMSIS-NN's vector form of the same requantization.

   Handled: int8 inputs and output, both inputs of the output's shape.
   Everything else (broadcasting, int16, float, int32) goes to the stock ADD. */

#include <cmath>
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#endif
#include <cstdint>

#include "kernel_common.h"
#include "shufflenet_kernels.h"
#include "tensorflow/lite/c/builtin_op_data.h"
#include "tensorflow/lite/kernels/kernel_util.h"
#include "tensorflow/lite/micro/kernels/add.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/micro_context.h"

#if defined(__ARM_FEATURE_MVE) && defined(CMSIS_NN)
#include "arm_nnsupportfunctions.h"
#define KS_ADD_MVE 1
#endif

namespace keras_shufflenet {
namespace {

constexpr int kTableSize = 256;


struct OpData {
  tflite::OpDataAdd add;     // TFLM's own parameters, from CalculateOpDataAdd.
  int tables_buffer_index;   // Scratch for the two tables, 2 x 256 int32.
  bool same_input_tables;    // Both inputs quantized alike: one table serves both.
  bool handled;              // false: the stock kernel runs this node.
  void* stock_data;
};

const TFLMRegistration& Stock() {
  static const TFLMRegistration stock = tflite::Register_ADD();
  return stock;
}

// A quantized tensor's scale and zero point, as TFLM's ADD needs them.
TfLiteStatus CheckQuantization(TfLiteContext* context, const TfLiteTensor* tensor, const char* name) {
  TF_LITE_ENSURE_MSG(context, tensor->quantization.type == kTfLiteAffineQuantization,
                     "ADD: an int8 tensor has no quantization parameters");
  if (!(tensor->params.scale > 0 && std::isfinite(tensor->params.scale))) {
    MicroPrintf("ADD: the %s's scale must be positive and finite, not %f.", name,
                static_cast<double>(tensor->params.scale));
    return kTfLiteError;
  }
  if (tensor->params.zero_point < -128 || tensor->params.zero_point > 127) {
    MicroPrintf("ADD: the %s's zero point must be in [-128, 127], not %d.", name,
                static_cast<int>(tensor->params.zero_point));
    return kTfLiteError;
  }
  return kTfLiteOk;
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  auto* data = static_cast<OpData*>(node->user_data);
  tflite::MicroContext* micro_context = tflite::GetMicroContext(context);
  TfLiteTensor* input1 = micro_context->AllocateTempInputTensor(node, 0);
  TfLiteTensor* input2 = micro_context->AllocateTempInputTensor(node, 1);
  TfLiteTensor* output = micro_context->AllocateTempOutputTensor(node, 0);
  TF_LITE_ENSURE(context, input1 != nullptr && input2 != nullptr && output != nullptr);
  data->handled = input1->type == kTfLiteInt8 && input2->type == kTfLiteInt8 && output->type == kTfLiteInt8 &&
                  tflite::HaveSameShapes(input1, input2) && tflite::HaveSameShapes(input1, output);
  TfLiteStatus status = kTfLiteOk;
  if (data->handled) {
    status = CheckQuantization(context, input1, "first input");
    if (status == kTfLiteOk) status = CheckQuantization(context, input2, "second input");
    if (status == kTfLiteOk) status = CheckQuantization(context, output, "output");
    // The sum's multiplier, 2 max(input scales) / (2^20 output scale), must be below 1.
    const double twice_max_input_scale =
        2.0 * static_cast<double>(input1->params.scale > input2->params.scale ? input1->params.scale
                                                                                : input2->params.scale);
    if (status == kTfLiteOk && twice_max_input_scale >= (1 << 20) * static_cast<double>(output->params.scale)) {
      MicroPrintf("ADD: the output's scale %g is too small for the inputs' (%g, %g).",
                  static_cast<double>(output->params.scale), static_cast<double>(input1->params.scale),
                  static_cast<double>(input2->params.scale));
      status = kTfLiteError;
    }
    if (status == kTfLiteOk) {
      status = tflite::CalculateOpDataAdd(context, static_cast<TfLiteAddParams*>(node->builtin_data), input1,
                                          input2, output, &data->add);
    }
    data->same_input_tables = data->add.input1_offset == data->add.input2_offset &&
                              data->add.input1_multiplier == data->add.input2_multiplier &&
                              data->add.input1_shift == data->add.input2_shift;
    if (status == kTfLiteOk) {
      status = context->RequestScratchBufferInArena(context, 2 * kTableSize * sizeof(int32_t),
                                                    &data->tables_buffer_index);
    }
  }
  micro_context->DeallocateTempTfLiteTensor(input1);
  micro_context->DeallocateTempTfLiteTensor(input2);
  micro_context->DeallocateTempTfLiteTensor(output);
  if (status != kTfLiteOk || data->handled) return status;
  return PrepareStock(Stock(), &data->stock_data, context, node);
}

// table[uint8(x)] = the input's rescaled value x' for every int8 x.
void FillTable(int32_t* table, int32_t offset, int left_shift, int32_t multiplier, int shift) {
  for (int x = -128; x < 128; ++x) {
    table[static_cast<uint8_t>(x)] = Requantize((x + offset) * (1 << left_shift), multiplier, shift);
  }
}

// out[i] = requantize(table1[x1[i]] + table2[x2[i]]), clamped to the
// activation: saturated to int8 (one SSAT on DSP cores), then only the
// activation's own bounds (kLower: a fused ReLU; kUpper: ReLU6).
template <bool kFast, bool kLower, bool kUpper>
void AddRows(const uint8_t* x1, const uint8_t* x2, int8_t* out, int size, const int32_t* table1,
             const int32_t* table2, const tflite::OpDataAdd& add) {
  const int32_t multiplier = add.output_multiplier;
  const int shift = add.output_shift;
  const FastRequantizer fast = kFast ? MakeFastRequantizer(multiplier, shift) : FastRequantizer{0, 0, 0};
  const int32_t offset = add.output_offset;
  const int32_t act_min = add.output_activation_min;
  const int32_t act_max = add.output_activation_max;
  for (int i = 0; i < size; ++i) {
    const int32_t sum = table1[x1[i]] + table2[x2[i]];
    int32_t value = (kFast ? RequantizeFast(sum, fast) : Requantize(sum, multiplier, shift)) + offset;
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
    value = __ssat(value, 8);
#else
    value = value < -128 ? -128 : value > 127 ? 127 : value;
#endif
    if (kLower) value = value < act_min ? act_min : value;
    if (kUpper) value = value > act_max ? act_max : value;
    out[i] = static_cast<int8_t>(value);
  }
}

#if defined(KS_ADD_MVE)
// Four elements at a time: the tables' entries gathered, the sum requantized
// by CMSIS-NN's arm_requantize_mve (TFLM's double rounding, lane by lane).
// Returns how many elements it did; the caller does the last 0 to 3.
int AddRowsMve(const uint8_t* x1, const uint8_t* x2, int8_t* out, int size, const int32_t* table1,
               const int32_t* table2, const tflite::OpDataAdd& add) {
  const int32x4_t offset = vdupq_n_s32(add.output_offset);
  const int32x4_t low = vdupq_n_s32(add.output_activation_min);
  const int32x4_t high = vdupq_n_s32(add.output_activation_max);
  int i = 0;
  for (; i + 4 <= size; i += 4) {
    const int32x4_t sum = vaddq_s32(vldrwq_gather_shifted_offset_s32(table1, vldrbq_u32(x1 + i)),
                                    vldrwq_gather_shifted_offset_s32(table2, vldrbq_u32(x2 + i)));
    int32x4_t value = vaddq_s32(arm_requantize_mve(sum, add.output_multiplier, add.output_shift), offset);
    value = vminq_s32(vmaxq_s32(value, low), high);
    vstrbq_s32(out + i, value);
  }
  return i;
}
#endif

// The variants worth their flash: fast requantization with no activation or
// with a ReLU (ShuffleNet's); one for any other parameters (ReLU6 included).
using AddRowsFunction = void (*)(const uint8_t*, const uint8_t*, int8_t*, int, const int32_t*, const int32_t*,
                                 const tflite::OpDataAdd&);
AddRowsFunction ChooseAddRows(const tflite::OpDataAdd& add) {
  if (!IsFastRequantizable(add.output_multiplier, add.output_shift) || add.output_activation_max < 127) {
    return AddRows<false, true, true>;
  }
  return add.output_activation_min > -128 ? AddRows<true, true, false> : AddRows<true, false, false>;
}

TfLiteStatus Invoke(TfLiteContext* context, TfLiteNode* node) {
  const auto* data = static_cast<const OpData*>(node->user_data);
  if (!data->handled) return InvokeStock(Stock(), data->stock_data, context, node);
  const tflite::OpDataAdd& add = data->add;
  const TfLiteEvalTensor* input1 = tflite::micro::GetEvalInput(context, node, 0);
  const TfLiteEvalTensor* input2 = tflite::micro::GetEvalInput(context, node, 1);
  TfLiteEvalTensor* output = tflite::micro::GetEvalOutput(context, node, 0);

  int32_t* table1 = static_cast<int32_t*>(context->GetScratchBuffer(context, data->tables_buffer_index));
  int32_t* table2 = data->same_input_tables ? table1 : table1 + kTableSize;
  FillTable(table1, add.input1_offset, add.left_shift, add.input1_multiplier, add.input1_shift);
  if (!data->same_input_tables) {
    FillTable(table2, add.input2_offset, add.left_shift, add.input2_multiplier, add.input2_shift);
  }

  const uint8_t* x1 = reinterpret_cast<const uint8_t*>(tflite::micro::GetTensorData<int8_t>(input1));
  const uint8_t* x2 = reinterpret_cast<const uint8_t*>(tflite::micro::GetTensorData<int8_t>(input2));
  int8_t* out = tflite::micro::GetTensorData<int8_t>(output);
  int size = tflite::micro::GetTensorShape(output).FlatSize();
#if defined(KS_ADD_MVE)
  const int done = AddRowsMve(x1, x2, out, size, table1, table2, add);
  x1 += done;
  x2 += done;
  out += done;
  size -= done;
#endif
  ChooseAddRows(add)(x1, x2, out, size, table1, table2, add);
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_ADD() {
  return ProjectRegistration(Stock(), InitNodeData<OpData>, Prepare, Invoke);
}

}  // namespace keras_shufflenet
