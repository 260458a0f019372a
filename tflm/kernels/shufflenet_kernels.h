/* The project's int8 kernels for the operators ShuffleNet spends its time in.

   Each function returns a TFLMRegistration for a builtin operator, to pass to
   the op resolver in place of the stock one:

     resolver.AddAdd(keras_shufflenet::Register_ADD());

   The .tflite file stays standard and TFLM is not patched. Each kernel handles
   the cases ShuffleNet has (see its file) and hands every other case to the
   stock kernel it replaces (CMSIS-NN's when the build defines CMSIS_NN,
   TFLM's reference kernel otherwise), so one registration serves every model.
   Outputs are bit-identical to TFLM's reference kernels.

   The op_resolver.h that keras_shufflenet.micro.export writes registers these
   when the build defines KERAS_SHUFFLENET_KERNELS (tflm/Makefile's
   KERNELS=shufflenet), and the stock kernels otherwise. */

#ifndef KERAS_SHUFFLENET_TFLM_KERNELS_SHUFFLENET_KERNELS_H_
#define KERAS_SHUFFLENET_TFLM_KERNELS_SHUFFLENET_KERNELS_H_

#include "tensorflow/lite/micro/micro_common.h"

namespace keras_shufflenet {

// int8 ADD of two tensors of the same shape: each input's rescaling read from a
// 256-entry table, one requantization per element.
TFLMRegistration Register_ADD();

// int8 grouped 1x1 CONV_2D with stride 1, and stems (an ungrouped window of at
// most 128 values) through im2col: per group, a GEMM that reads
// the group's input channels and writes its output channels in place.
TFLMRegistration Register_CONV_2D();

// int8 MEAN over height and width of a 4-D tensor (global average pooling).
TFLMRegistration Register_MEAN();

// int8 MAX_POOL_2D, four channels at a time.
TFLMRegistration Register_MAX_POOL_2D();

// int8 TRANSPOSE that swaps the last two dimensions (the channel shuffle).
TFLMRegistration Register_TRANSPOSE();

}  // namespace keras_shufflenet

#endif  // KERAS_SHUFFLENET_TFLM_KERNELS_SHUFFLENET_KERNELS_H_
