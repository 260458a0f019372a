/* int8 TRANSPOSE that swaps the last two dimensions: ShuffleNet's channel
   shuffle, [..., groups, channels per group] -> [..., channels per group, groups].

   Each [rows, cols] block is read row by row and written with a stride of
   `rows` bytes (ShuffleNet's group count); for 3 groups the stride is a
   compile-time constant, an immediate in the stores. With MVE, 16 bytes of
   a row go at a time, scattered to their places.

   Handled: int8, at least 2 dimensions, a constant int32 permutation that
   swaps the last two. Everything else goes to the stock TRANSPOSE. */

#include <cstdint>

#include "kernel_common.h"
#include "shufflenet_kernels.h"
#include "tensorflow/lite/kernels/kernel_util.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/kernels/transpose.h"
#include "tensorflow/lite/micro/micro_context.h"

#if defined(__ARM_FEATURE_MVE) && defined(CMSIS_NN)
#include <arm_mve.h>
#endif

namespace keras_shufflenet {
namespace {

struct OpData {
  bool handled;  // false: the stock kernel runs this node.
  void* stock_data;
};

const TFLMRegistration& Stock() {
  static const TFLMRegistration stock = tflite::Register_TRANSPOSE();
  return stock;
}

bool SwapsLastTwo(const TfLiteTensor* input, const TfLiteTensor* perm, const TfLiteTensor* output) {
  if (input->type != kTfLiteInt8 || output->type != kTfLiteInt8) return false;
  if (perm->type != kTfLiteInt32 || !tflite::IsConstantTensor(perm)) return false;
  const int dims = input->dims->size;
  if (dims < 2 || output->dims->size != dims || tflite::NumElements(perm) != dims) return false;
  const int32_t* order = tflite::GetTensorData<int32_t>(perm);
  for (int i = 0; i < dims - 2; ++i) {
    if (order[i] != i || output->dims->data[i] != input->dims->data[i]) return false;
  }
  return order[dims - 2] == dims - 1 && order[dims - 1] == dims - 2 &&
         output->dims->data[dims - 2] == input->dims->data[dims - 1] &&
         output->dims->data[dims - 1] == input->dims->data[dims - 2];
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  auto* data = static_cast<OpData*>(node->user_data);
  {
    tflite::TransposeContext op(context, node);
    TF_LITE_ENSURE(context, op.input != nullptr && op.perm != nullptr && op.output != nullptr);
    data->handled = SwapsLastTwo(op.input, op.perm, op.output);
  }
  if (data->handled) return kTfLiteOk;
  return PrepareStock(Stock(), &data->stock_data, context, node);
}

// `blocks` blocks of [rows, cols] to [cols, rows]; kRows > 0 fixes the row count.
template <int kRows>
void TransposeBlocks(const int8_t* input, int8_t* output, int blocks, int rows, int cols) {
  const int row_count = kRows > 0 ? kRows : rows;
  for (int block = 0; block < blocks; ++block) {
    for (int row = 0; row < row_count; ++row) {
      int8_t* target = output + row;
      int col = 0;
      for (; col + 4 <= cols; col += 4) {
        const int8_t a = input[0], b = input[1], c = input[2], d = input[3];
        target[0] = a;
        target[row_count] = b;
        target[2 * row_count] = c;
        target[3 * row_count] = d;
        input += 4;
        target += 4 * row_count;
      }
      for (; col < cols; ++col) {
        *target = *input++;
        target += row_count;
      }
    }
    output += row_count * cols;
  }
}

#if defined(__ARM_FEATURE_MVE) && defined(CMSIS_NN)
// With MVE: 16 bytes of a row at a time, loaded in order and scattered to
// their places `rows` bytes apart (tail-predicated at the row's end).
void TransposeBlocksMve(const int8_t* input, int8_t* output, int blocks, int rows, int cols) {
  const uint8x16_t offsets = vmulq_n_u8(vidupq_n_u8(0, 1), static_cast<uint8_t>(rows));
  for (int block = 0; block < blocks; ++block) {
    for (int row = 0; row < rows; ++row) {
      for (int col = 0; col < cols; col += 16) {
        const mve_pred16_t lanes = vctp8q(static_cast<uint32_t>(cols - col));
        const int8x16_t values = vldrbq_z_s8(input + col, lanes);
        vstrbq_scatter_offset_p_s8(output + row + col * rows, offsets, values, lanes);
      }
      input += cols;
    }
    output += rows * cols;
  }
}
#endif

TfLiteStatus Invoke(TfLiteContext* context, TfLiteNode* node) {
  const auto* data = static_cast<const OpData*>(node->user_data);
  if (!data->handled) return InvokeStock(Stock(), data->stock_data, context, node);
  const TfLiteEvalTensor* input = tflite::micro::GetEvalInput(context, node, tflite::kTransposeInputTensor);
  TfLiteEvalTensor* output = tflite::micro::GetEvalOutput(context, node, tflite::kTransposeOutputTensor);
  const int dims = input->dims->size;
  const int rows = input->dims->data[dims - 2];
  const int cols = input->dims->data[dims - 1];
  int blocks = 1;
  for (int i = 0; i < dims - 2; ++i) blocks *= input->dims->data[i];
  const int8_t* in = tflite::micro::GetTensorData<int8_t>(input);
  int8_t* out = tflite::micro::GetTensorData<int8_t>(output);
#if defined(__ARM_FEATURE_MVE) && defined(CMSIS_NN)
  if (rows <= 16) {  // The scatter's byte offsets reach 15 * rows.
    TransposeBlocksMve(in, out, blocks, rows, cols);
    return kTfLiteOk;
  }
#endif
  // Three groups, the paper's choice, get their own copy of the loop; other
  // group counts share one (flash is what a board runs short of).
  if (rows == 3) {
    TransposeBlocks<3>(in, out, blocks, rows, cols);
  } else {
    TransposeBlocks<0>(in, out, blocks, rows, cols);
  }
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_TRANSPOSE() {
  return ProjectRegistration(Stock(), InitNodeData<OpData>, Prepare, Invoke);
}

}  // namespace keras_shufflenet
