/* Randomized bit-exactness test of the project's kernels (tflm/kernels/).

   Each case builds random int8 tensors and quantization parameters, runs the
   project's registration through TFLM's KernelRunner, and compares every
   output byte with TFLM's reference implementation of the operator
   (tensorflow/lite/kernels/internal/reference/, with the parameters TFLM's
   reference kernels derive from the tensors). Cases the kernel does not
   handle (broadcasting, other filter sizes, strides or groups, other axes or
   permutations, float) must give the same bytes through its fallback to the stock kernel.
   Inconsistent quantization must fail Prepare.

   Usage: kernel_test [cases per kernel (350)] [seed (1)]
   Prints one line per kernel and exits with 1 on any mismatch. */

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernel_common.h"
#include "shufflenet_kernels.h"
#include "tensorflow/lite/c/builtin_op_data.h"
#include "tensorflow/lite/kernels/internal/quantization_util.h"
#include "tensorflow/lite/kernels/internal/reference/integer_ops/add.h"
#include "tensorflow/lite/kernels/internal/reference/integer_ops/conv.h"
#include "tensorflow/lite/kernels/internal/reference/integer_ops/pooling.h"
#include "tensorflow/lite/kernels/internal/reference/pooling.h"
#include "tensorflow/lite/kernels/padding.h"
#include "tensorflow/lite/kernels/internal/reference/reduce.h"
#include "tensorflow/lite/kernels/internal/reference/transpose.h"
#include "tensorflow/lite/kernels/kernel_util.h"
#include "tensorflow/lite/micro/kernels/kernel_runner.h"

namespace {

// xorshift32: the same cases on every machine.
class Random {
 public:
  explicit Random(uint32_t seed) : state_(seed ? seed : 1) {}
  uint32_t Next() {
    state_ ^= state_ << 13;
    state_ ^= state_ >> 17;
    state_ ^= state_ << 5;
    return state_;
  }
  int Int(int low, int high) { return low + static_cast<int>(Next() % static_cast<uint32_t>(high - low + 1)); }
  bool Chance(int percent) { return Int(0, 99) < percent; }
  // 10^U(low, high): scales and multipliers over many orders of magnitude.
  float LogUniform(float low_exponent, float high_exponent) {
    const float u = static_cast<float>(Next() % 1000000) / 1e6f;
    return std::pow(10.0f, low_exponent + u * (high_exponent - low_exponent));
  }
  void Fill(int8_t* data, int size) {
    for (int i = 0; i < size; ++i) data[i] = static_cast<int8_t>(Int(-128, 127));
  }

 private:
  uint32_t state_;
};

// TFLM arrays whose size is their first element, as TFLM's tests build them.
struct Dims {
  int data[7];
  TfLiteIntArray* array() { return reinterpret_cast<TfLiteIntArray*>(data); }
  // The sizes as TFLM's RuntimeShape takes them (int32_t is long on arm-none-eabi).
  tflite::RuntimeShape Shape() const { return tflite::RuntimeShape(data[0], reinterpret_cast<const int32_t*>(data + 1)); }
  int Count() const {
    int count = 1;
    for (int i = 1; i <= data[0]; ++i) count *= data[i];
    return count;
  }
};
struct Scales {
  int size;
  float data[512];
  TfLiteFloatArray* array() { return reinterpret_cast<TfLiteFloatArray*>(this); }
};
struct ZeroPoints {
  int size;
  int data[512];
  TfLiteIntArray* array() { return reinterpret_cast<TfLiteIntArray*>(this); }
};

// An int8 tensor with one scale and zero point (or a scale per channel).
struct QuantizedTensor {
  Scales scales;
  ZeroPoints zero_points;
  TfLiteAffineQuantization affine;

  TfLiteTensor Make(TfLiteType type, void* data, Dims& dims, int channels = 0, int quantized_dimension = 0) {
    TfLiteTensor tensor = {};
    tensor.type = type;
    tensor.data.data = data;
    tensor.dims = dims.array();
    tensor.allocation_type = kTfLiteArenaRw;
    tensor.params.scale = scales.data[0];
    tensor.params.zero_point = zero_points.data[0];
    scales.size = channels > 0 ? channels : 1;
    zero_points.size = scales.size;
    affine.scale = scales.array();
    affine.zero_point = zero_points.array();
    affine.quantized_dimension = quantized_dimension;
    tensor.quantization.type = kTfLiteAffineQuantization;
    tensor.quantization.params = &affine;
    return tensor;
  }
};

TfLiteTensor ConstantInt32(int32_t* data, Dims& dims) {
  TfLiteTensor tensor = {};
  tensor.type = kTfLiteInt32;
  tensor.data.i32 = data;
  tensor.dims = dims.array();
  tensor.allocation_type = kTfLiteMmapRo;
  return tensor;
}

void IgnoreError(TfLiteContext*, const char*, ...) {}

// TFLM's activation range for an int8 output (kernel_util's CalculateActivationRangeQuantized).
// False where TFLM refuses it (a ReLU6 bound that overflows int32 at a tiny scale).
bool ActivationRange(TfLiteFusedActivation activation, TfLiteTensor* output, int32_t* min, int32_t* max) {
  TfLiteContext context = {};
  context.ReportError = IgnoreError;
  return tflite::CalculateActivationRangeQuantized(&context, activation, output, min, max) == kTfLiteOk;
}

TfLiteFusedActivation RandomActivation(Random& random) {
  const int pick = random.Int(0, 2);
  return pick == 0 ? kTfLiteActNone : pick == 1 ? kTfLiteActRelu : kTfLiteActRelu6;
}

// The tally of one kernel's cases.
struct Tally {
  const char* name;
  int handled_cases = 0;
  int stock_cases = 0;
  int refused_cases = 0;
  int mismatches = 0;
};

// Runs `registration` and compares its int8 output with `expected`.
// Returns whether Prepare succeeded.
bool RunAndCompare(Tally& tally, const TFLMRegistration& registration, TfLiteTensor* tensors, int tensor_count,
                   Dims& inputs, Dims& outputs, const void* builtin_data, const int8_t* expected, const int8_t* actual,
                   int size, int case_index) {
  tflite::micro::KernelRunner runner(registration, tensors, tensor_count, inputs.array(), outputs.array(),
                                     builtin_data);
  if (runner.InitAndPrepare() != kTfLiteOk) return false;
  if (runner.Invoke() != kTfLiteOk) {
    std::printf("%s case %d: Invoke failed\n", tally.name, case_index);
    ++tally.mismatches;
    return true;
  }
  for (int i = 0; i < size; ++i) {
    if (actual[i] != expected[i]) {
      std::printf("%s case %d: output %d is %d, the reference gives %d\n", tally.name, case_index, i, actual[i],
                  expected[i]);
      ++tally.mismatches;
      break;
    }
  }
  return true;
}

// Every tensor of a case fits these buffers; cases that would not are drawn again.
constexpr int kMaxElements = 16384;
int8_t g_input1[kMaxElements];
int8_t g_input2[kMaxElements];
int8_t g_filter[kMaxElements];
int32_t g_bias[512];
int8_t g_output[kMaxElements];
int8_t g_expected[kMaxElements];

// --- Requantization ---------------------------------------------------------
// The kernels' requantization against TFLM's MultiplyByQuantizedMultiplier on
// random and extreme arguments.
void TestRequantize(Random& random, int cases, Tally& tally) {
  static const int32_t kExtremes[] = {INT32_MIN, INT32_MIN + 1, -(1 << 30), -1, 0, 1, (1 << 30), INT32_MAX};
  for (int index = 0; index < cases; ++index) {
    const int32_t x = random.Chance(10)   ? kExtremes[random.Int(0, 7)]
                      : random.Chance(50) ? static_cast<int32_t>(random.Next())
                                          : random.Int(-100000, 100000);
    int32_t multiplier = static_cast<int32_t>((1u << 30) + (random.Next() % (1u << 30)));
    if (random.Chance(10)) multiplier = random.Chance(50) ? (1 << 30) : INT32_MAX;
    const int shift = random.Chance(10) ? random.Int(0, 7) : random.Int(-31, -1);
    // TFLM's preconditions: the left-shifted x must not overflow.
    if (shift > 0 && (x > (INT32_MAX >> shift) || x < (INT32_MIN >> shift))) continue;
    const int32_t expected = tflite::MultiplyByQuantizedMultiplier(x, multiplier, shift);
    bool fast = keras_shufflenet::IsFastRequantizable(multiplier, shift);
    if (keras_shufflenet::Requantize(x, multiplier, shift) != expected ||
        (fast && keras_shufflenet::RequantizeFast(x, keras_shufflenet::MakeFastRequantizer(multiplier, shift)) !=
                     expected)) {
      std::printf("REQUANTIZE case %d: x=%ld multiplier=%ld shift=%d: TFLM gives %ld\n", index, static_cast<long>(x),
                  static_cast<long>(multiplier), shift, static_cast<long>(expected));
      ++tally.mismatches;
    }
    ++(fast ? tally.handled_cases : tally.stock_cases);
  }
}

#if defined(__ARM_FEATURE_MVE) && defined(CMSIS_NN)
constexpr bool kMve = true;
#else
constexpr bool kMve = false;
#endif

// --- ADD ---------------------------------------------------------------------
void TestAdd(Random& random, int cases, Tally& tally) {
  for (int index = 0; index < cases; ++index) {
    const bool broadcast = random.Chance(15);  // Not handled: the stock kernel's case.
    Dims shape = {{4, random.Int(1, 2), random.Int(1, 12), random.Int(1, 12), random.Int(1, 96)}};
    if (shape.Count() > kMaxElements) {
      --index;
      continue;
    }
    Dims shape2 = shape;
    if (broadcast) shape2 = {{4, 1, 1, 1, shape.data[4]}};
    random.Fill(g_input1, shape.Count());
    random.Fill(g_input2, shape2.Count());
    QuantizedTensor q1, q2, qo;
    q1.scales.data[0] = random.LogUniform(-4, 0);
    q2.scales.data[0] = random.Chance(20) ? q1.scales.data[0] : random.LogUniform(-4, 0);
    const float max_scale = std::fmax(q1.scales.data[0], q2.scales.data[0]);
    qo.scales.data[0] = max_scale * random.LogUniform(-5, 2);
    q1.zero_points.data[0] = random.Int(-128, 127);
    q2.zero_points.data[0] = random.Chance(20) ? q1.zero_points.data[0] : random.Int(-128, 127);
    qo.zero_points.data[0] = random.Int(-128, 127);
    TfLiteTensor tensors[3] = {q1.Make(kTfLiteInt8, g_input1, shape), q2.Make(kTfLiteInt8, g_input2, shape2),
                               qo.Make(kTfLiteInt8, g_output, shape)};
    TfLiteAddParams params = {};
    params.activation = RandomActivation(random);

    // TFLM's reference ADD: add_common.cc's parameters, then reference_integer_ops.
    tflite::ArithmeticParams op = {};
    op.left_shift = 20;
    op.input1_offset = -q1.zero_points.data[0];
    op.input2_offset = -q2.zero_points.data[0];
    op.output_offset = qo.zero_points.data[0];
    const double twice_max = 2 * static_cast<double>(max_scale);
    tflite::QuantizeMultiplierSmallerThanOneExp(q1.scales.data[0] / twice_max, &op.input1_multiplier,
                                                &op.input1_shift);
    tflite::QuantizeMultiplierSmallerThanOneExp(q2.scales.data[0] / twice_max, &op.input2_multiplier,
                                                &op.input2_shift);
    tflite::QuantizeMultiplierSmallerThanOneExp(twice_max / ((1 << 20) * static_cast<double>(qo.scales.data[0])),
                                                &op.output_multiplier, &op.output_shift);
    if (!ActivationRange(params.activation, &tensors[2], &op.quantized_activation_min,
                         &op.quantized_activation_max)) {
      --index;  // A case TFLM itself refuses: drawn again.
      continue;
    }
    const tflite::RuntimeShape s1 = shape.Shape(), s2 = shape2.Shape();
    if (broadcast) {
      tflite::reference_integer_ops::BroadcastAdd6DSlow(op, s1, g_input1, s2, g_input2, s1, g_expected);
    } else {
      tflite::reference_integer_ops::Add(op, s1, g_input1, s2, g_input2, s1, g_expected);
    }
    Dims inputs = {{2, 0, 1}};
    Dims outputs = {{1, 2}};
    std::memset(g_output, 0x55, sizeof(g_output));
    if (!RunAndCompare(tally, keras_shufflenet::Register_ADD(), tensors, 3, inputs, outputs, &params, g_expected,
                       g_output, shape.Count(), index)) {
      std::printf("ADD case %d: Prepare failed on a valid case\n", index);
      ++tally.mismatches;
    }
    ++(broadcast ? tally.stock_cases : tally.handled_cases);
  }
  // Inconsistent quantization: a zero point outside int8, a zero scale.
  for (int bad = 0; bad < 2; ++bad) {
    Dims shape = {{4, 1, 2, 2, 8}};
    QuantizedTensor q1, q2, qo;
    q1.scales.data[0] = bad == 1 ? 0.0f : 0.1f;
    q2.scales.data[0] = qo.scales.data[0] = 0.1f;
    q1.zero_points.data[0] = q2.zero_points.data[0] = 0;
    qo.zero_points.data[0] = bad == 0 ? 200 : 0;
    TfLiteTensor tensors[3] = {q1.Make(kTfLiteInt8, g_input1, shape), q2.Make(kTfLiteInt8, g_input2, shape),
                               qo.Make(kTfLiteInt8, g_output, shape)};
    TfLiteAddParams params = {};
    Dims inputs = {{2, 0, 1}};
    Dims outputs = {{1, 2}};
    if (RunAndCompare(tally, keras_shufflenet::Register_ADD(), tensors, 3, inputs, outputs, &params, g_output,
                      g_output, 0, -1)) {
      std::printf("ADD: Prepare accepted inconsistent quantization (case %d)\n", bad);
      ++tally.mismatches;
    }
    ++tally.refused_cases;
  }
}

// --- CONV_2D -----------------------------------------------------------------
void TestConv(Random& random, int cases, Tally& tally) {
  static const int kGroups[] = {2, 3, 4, 8};
  for (int index = 0; index < cases; ++index) {
    // Three kinds of case: grouped 1x1 convs (the GEMM per group; under 8
    // pixels, the stock kernel), ungrouped convs with short im2col rows (a
    // stem: im2col and the same GEMM), and the stock kernel's cases (ungrouped
    // 1x1, stride 1; im2col rows over 128 bytes).
    // (With MVE the im2col cases are the stock kernel's too: CMSIS-NN's is faster there.)
    const int kind = random.Int(0, 99);
    const bool grouped = kind < (kMve ? 85 : 60), im2col = !grouped && kind < 90;
    const int groups = !grouped ? 1 : random.Chance(80) ? kGroups[random.Int(0, 3)] : random.Int(2, 6);
    const int kernel = grouped ? 1 : random.Chance(70) ? 3 : random.Int(1, 2);
    const int stride = grouped || (!im2col && kernel == 1) ? 1 : random.Int(kernel == 1 ? 2 : 1, 2);
    const int depth = im2col ? random.Int(1, 4) : !grouped && kernel == 3 ? random.Int(15, 20)
                      : random.Chance(50) ? random.Int(1, 12) : random.Int(1, 48);  // Often not a multiple of 4.
    const int per_group = random.Int(1, 24);
    const int batches = random.Chance(10) ? 2 : 1;
    const int height = random.Int(1, 9), width = random.Int(1, 9);
    const bool handled = grouped ? batches * height * width >= 8 : im2col && !kMve;
    const bool other = !handled;
    const int out_height = (height - 1) / stride + 1, out_width = (width - 1) / stride + 1;  // SAME padding.
    const int in_channels = groups * depth, out_channels = groups * per_group;
    if (in_channels > 256 || out_channels > 256 || batches * height * width * in_channels > kMaxElements ||
        batches * out_height * out_width * out_channels > kMaxElements ||
        out_channels * kernel * kernel * depth > kMaxElements) {
      --index;
      continue;
    }
    Dims input_shape = {{4, batches, height, width, in_channels}};
    Dims filter_shape = {{4, out_channels, kernel, kernel, depth}};
    Dims bias_shape = {{1, out_channels}};
    Dims output_shape = {{4, batches, out_height, out_width, out_channels}};
    random.Fill(g_input1, input_shape.Count());
    random.Fill(g_filter, filter_shape.Count());
    for (int i = 0; i < filter_shape.Count(); ++i) g_filter[i] = g_filter[i] == -128 ? -127 : g_filter[i];
    for (int c = 0; c < out_channels; ++c) g_bias[c] = static_cast<int32_t>(random.Next() % 2000001) - 1000000;
    // Stock CMSIS-NN's grouped kernel reads a bias that is not there; converters always write one.
    const bool has_bias = !handled || random.Chance(85);
    const bool per_channel = random.Chance(80);
    QuantizedTensor qi, qf, qb, qo;
    qi.scales.data[0] = random.LogUniform(-3, 0);
    qo.scales.data[0] = random.LogUniform(-3, 0);
    qi.zero_points.data[0] = random.Int(-128, 127);
    qo.zero_points.data[0] = random.Int(-128, 127);
    // Effective multipliers input x filter / output from 1e-6 to about 4: right and left shifts.
    for (int c = 0; c < (per_channel ? out_channels : 1); ++c) {
      qf.scales.data[c] = qo.scales.data[0] / qi.scales.data[0] * random.LogUniform(-6, 0.6f);
      qf.zero_points.data[c] = 0;
      qb.scales.data[c] = qi.scales.data[0] * qf.scales.data[c];
      qb.zero_points.data[c] = 0;
    }
    TfLiteTensor tensors[4] = {
        qi.Make(kTfLiteInt8, g_input1, input_shape),
        qf.Make(kTfLiteInt8, g_filter, filter_shape, per_channel ? out_channels : 0, 0),
        qb.Make(kTfLiteInt32, g_bias, bias_shape, per_channel ? out_channels : 0, 0),
        qo.Make(kTfLiteInt8, g_output, output_shape),
    };
    TfLiteConvParams params = {};
    params.padding = kTfLitePaddingSame;
    params.stride_width = params.stride_height = stride;
    params.dilation_width_factor = params.dilation_height_factor = 1;
    params.activation = RandomActivation(random);

    // TFLM's reference CONV_2D: conv_common.cc's parameters, then reference_integer_ops.
    int32_t multipliers[256], shifts[256];
    for (int c = 0; c < out_channels; ++c) {
      const double effective = static_cast<double>(qi.scales.data[0]) *
                               static_cast<double>(qf.scales.data[per_channel ? c : 0]) /
                               static_cast<double>(qo.scales.data[0]);
      int shift;
      tflite::QuantizeMultiplier(effective, &multipliers[c], &shift);
      shifts[c] = shift;
    }
    tflite::ConvParams op = {};
    op.input_offset = -qi.zero_points.data[0];
    op.output_offset = qo.zero_points.data[0];
    op.stride_width = op.stride_height = stride;
    op.dilation_width_factor = op.dilation_height_factor = 1;
    const int pad_total_h = std::max((out_height - 1) * stride + kernel - height, 0);
    const int pad_total_w = std::max((out_width - 1) * stride + kernel - width, 0);
    op.padding_values.height = pad_total_h / 2;
    op.padding_values.width = pad_total_w / 2;
    if (!ActivationRange(params.activation, &tensors[3], &op.quantized_activation_min,
                         &op.quantized_activation_max)) {
      --index;  // A case TFLM itself refuses: drawn again.
      continue;
    }
    tflite::reference_integer_ops::ConvPerChannel(
        op, multipliers, shifts, input_shape.Shape(), g_input1,
        filter_shape.Shape(), g_filter, bias_shape.Shape(),
        has_bias ? g_bias : nullptr, output_shape.Shape(), g_expected);
    Dims inputs = {{3, 0, 1, has_bias ? 2 : -1}};
    Dims outputs = {{1, 3}};
    std::memset(g_output, 0x55, sizeof(g_output));
    if (!RunAndCompare(tally, keras_shufflenet::Register_CONV_2D(), tensors, 4, inputs, outputs, &params, g_expected,
                       g_output, output_shape.Count(), index)) {
      std::printf("CONV_2D case %d: Prepare failed on a valid case\n", index);
      ++tally.mismatches;
    }
    ++(other ? tally.stock_cases : tally.handled_cases);
  }
  // Inconsistent quantization: 3 filter scales for 4 output channels.
  Dims input_shape = {{4, 1, 2, 2, 4}}, filter_shape = {{4, 4, 1, 1, 2}}, output_shape = {{4, 1, 2, 2, 4}};
  QuantizedTensor qi, qf, qo;
  qi.scales.data[0] = qo.scales.data[0] = 0.1f;
  qi.zero_points.data[0] = qo.zero_points.data[0] = 0;
  for (int c = 0; c < 3; ++c) {
    qf.scales.data[c] = 0.01f;
    qf.zero_points.data[c] = 0;
  }
  TfLiteTensor tensors[3] = {qi.Make(kTfLiteInt8, g_input1, input_shape),
                             qf.Make(kTfLiteInt8, g_filter, filter_shape, 3, 0),
                             qo.Make(kTfLiteInt8, g_output, output_shape)};
  TfLiteConvParams params = {};
  params.padding = kTfLitePaddingSame;
  params.stride_width = params.stride_height = 1;
  params.dilation_width_factor = params.dilation_height_factor = 1;
  Dims inputs = {{3, 0, 1, -1}};
  Dims outputs = {{1, 2}};
  if (RunAndCompare(tally, keras_shufflenet::Register_CONV_2D(), tensors, 3, inputs, outputs, &params, g_output,
                    g_output, 0, -1)) {
    std::printf("CONV_2D: Prepare accepted 3 filter scales for 4 channels\n");
    ++tally.mismatches;
  }
  ++tally.refused_cases;
}

// --- TRANSPOSE ---------------------------------------------------------------
void TestTranspose(Random& random, int cases, Tally& tally) {
  for (int index = 0; index < cases; ++index) {
    const int rank = random.Int(2, 4);
    Dims shape = {{rank}};
    for (int i = 1; i <= rank; ++i) shape.data[i] = random.Int(1, i >= rank - 1 ? 24 : 12);
    if (random.Chance(50)) shape.data[rank - 1] = random.Int(2, 8);  // Group counts as ShuffleNet's.
    int32_t perm[4];
    for (int i = 0; i < rank; ++i) perm[i] = i;
    const bool other = random.Chance(15);  // Another permutation: the stock kernel's case.
    if (other && rank > 2) {
      perm[0] = 1;
      perm[1] = 0;
    } else {
      perm[rank - 2] = rank - 1;
      perm[rank - 1] = rank - 2;
    }
    Dims out_shape = {{rank}};
    for (int i = 0; i < rank; ++i) out_shape.data[i + 1] = shape.data[perm[i] + 1];
    if (shape.Count() > kMaxElements) {
      --index;
      continue;
    }
    random.Fill(g_input1, shape.Count());
    Dims perm_shape = {{1, rank}};
    QuantizedTensor qi, qo;
    qi.scales.data[0] = qo.scales.data[0] = 0.05f;
    qi.zero_points.data[0] = qo.zero_points.data[0] = random.Int(-128, 127);
    TfLiteTensor tensors[3] = {qi.Make(kTfLiteInt8, g_input1, shape), ConstantInt32(perm, perm_shape),
                               qo.Make(kTfLiteInt8, g_output, out_shape)};
    tflite::TransposeParams op = {};
    op.perm_count = static_cast<int8_t>(rank);
    for (int i = 0; i < rank; ++i) op.perm[i] = perm[i];
    tflite::reference_ops::Transpose(op, shape.Shape(), g_input1,
                                     out_shape.Shape(), g_expected);
    Dims inputs = {{2, 0, 1}};
    Dims outputs = {{1, 2}};
    std::memset(g_output, 0x55, sizeof(g_output));
    if (!RunAndCompare(tally, keras_shufflenet::Register_TRANSPOSE(), tensors, 3, inputs, outputs, nullptr,
                       g_expected, g_output, shape.Count(), index)) {
      std::printf("TRANSPOSE case %d: Prepare failed on a valid case\n", index);
      ++tally.mismatches;
    }
    ++(other && rank > 2 ? tally.stock_cases : tally.handled_cases);
  }
}

// --- MEAN --------------------------------------------------------------------
void TestMean(Random& random, int cases, Tally& tally) {
  for (int index = 0; index < cases; ++index) {
    Dims shape = {{4, random.Int(1, 2), random.Int(1, 12), random.Int(1, 12), random.Int(1, 128)}};
    if (shape.Count() > kMaxElements) {
      --index;
      continue;
    }
    const bool other = random.Chance(15);  // Over the channels: the stock kernel's case.
    int32_t axes[2] = {1, 2};
    if (random.Chance(50)) {
      axes[0] = 2;
      axes[1] = 1;
    }
    if (other) axes[0] = 3;
    const int axis_count = other ? 1 : 2;
    const bool keep_dims = random.Chance(50);
    Dims out_shape = keep_dims ? Dims{{4, shape.data[1], 1, 1, shape.data[4]}} : Dims{{2, shape.data[1], shape.data[4]}};
    if (other) {
      out_shape = keep_dims ? Dims{{4, shape.data[1], shape.data[2], shape.data[3], 1}}
                            : Dims{{3, shape.data[1], shape.data[2], shape.data[3]}};
    }
    random.Fill(g_input1, shape.Count());
    Dims axis_shape = {{1, axis_count}};
    QuantizedTensor qi, qo;
    qi.scales.data[0] = random.LogUniform(-3, 0);
    qo.scales.data[0] = qi.scales.data[0] * random.LogUniform(-1.5f, 1.5f);
    qi.zero_points.data[0] = random.Int(-128, 127);
    qo.zero_points.data[0] = random.Int(-128, 127);
    TfLiteTensor tensors[3] = {qi.Make(kTfLiteInt8, g_input1, shape), ConstantInt32(axes, axis_shape),
                               qo.Make(kTfLiteInt8, g_output, out_shape)};
    TfLiteReducerParams params = {};
    params.keep_dims = keep_dims;

    // TFLM's reference MEAN: reduce_common.cc's multiplier, then reference_ops.
    int32_t multiplier;
    int shift;
    tflite::QuantizeMultiplier(static_cast<double>(qi.scales.data[0]) / static_cast<double>(qo.scales.data[0]),
                               &multiplier, &shift);
    int temp_index[4], resolved_axis[4];
    static int32_t temp_sum[kMaxElements];
    tflite::reference_ops::QuantizedMeanOrSum<int8_t, int32_t>(
        g_input1, qi.zero_points.data[0], shape.data + 1, 4, g_expected, multiplier, shift, qo.zero_points.data[0],
        out_shape.data + 1, out_shape.data[0], reinterpret_cast<const int*>(axes), axis_count, keep_dims, temp_index, resolved_axis, temp_sum,
        /*compute_sum=*/false);
    Dims inputs = {{2, 0, 1}};
    Dims outputs = {{1, 2}};
    std::memset(g_output, 0x55, sizeof(g_output));
    if (!RunAndCompare(tally, keras_shufflenet::Register_MEAN(), tensors, 3, inputs, outputs, &params, g_expected,
                       g_output, out_shape.Count(), index)) {
      std::printf("MEAN case %d: Prepare failed on a valid case\n", index);
      ++tally.mismatches;
    }
    ++(other ? tally.stock_cases : tally.handled_cases);
  }
}

// --- MAX_POOL_2D -------------------------------------------------------------
void TestMaxPool(Random& random, int cases, Tally& tally) {
  for (int index = 0; index < cases; ++index) {
    const bool other = random.Chance(10);  // float32: the stock kernel's case.
    const int filter = random.Int(1, 4), stride = random.Int(1, 3);
    const bool same = random.Chance(50);
    Dims shape = {{4, random.Int(1, 2), random.Int(1, 14), random.Int(1, 14), random.Int(1, 40)}};
    const int out_h = same ? (shape.data[2] + stride - 1) / stride : (shape.data[2] - filter) / stride + 1;
    const int out_w = same ? (shape.data[3] + stride - 1) / stride : (shape.data[3] - filter) / stride + 1;
    if (out_h <= 0 || out_w <= 0 || shape.Count() > kMaxElements / 4) {
      --index;
      continue;
    }
    Dims out_shape = {{4, shape.data[1], out_h, out_w, shape.data[4]}};
    TfLitePoolParams params = {};
    params.padding = same ? kTfLitePaddingSame : kTfLitePaddingValid;
    params.stride_width = params.stride_height = stride;
    params.filter_width = params.filter_height = filter;
    params.activation = RandomActivation(random);
    QuantizedTensor qi, qo;
    qi.scales.data[0] = qo.scales.data[0] = random.LogUniform(-3, 0);
    qi.zero_points.data[0] = qo.zero_points.data[0] = random.Int(-128, 127);
    int out_height, out_width;
    const TfLitePaddingValues padding = tflite::ComputePaddingHeightWidth(
        stride, stride, 1, 1, shape.data[2], shape.data[3], filter, filter, params.padding, &out_height, &out_width);
    tflite::PoolParams op = {};
    op.stride_height = op.stride_width = stride;
    op.filter_height = op.filter_width = filter;
    op.padding_values.height = padding.height;
    op.padding_values.width = padding.width;
    static float float_input[kMaxElements / 4], float_output[kMaxElements / 4], float_expected[kMaxElements / 4];
    TfLiteTensor tensors[2];
    if (other) {
      for (int i = 0; i < shape.Count(); ++i) float_input[i] = static_cast<float>(random.Int(-1000, 1000)) / 7.0f;
      tflite::CalculateActivationRange(params.activation, &op.float_activation_min, &op.float_activation_max);
      tflite::reference_ops::MaxPool(op, shape.Shape(), float_input, out_shape.Shape(), float_expected);
      tensors[0] = qi.Make(kTfLiteFloat32, float_input, shape);
      tensors[1] = qo.Make(kTfLiteFloat32, float_output, out_shape);
      tensors[0].quantization = tensors[1].quantization = {kTfLiteNoQuantization, nullptr};
    } else {
      random.Fill(g_input1, shape.Count());
      tensors[0] = qi.Make(kTfLiteInt8, g_input1, shape);
      tensors[1] = qo.Make(kTfLiteInt8, g_output, out_shape);
      if (!ActivationRange(params.activation, &tensors[1], &op.quantized_activation_min,
                           &op.quantized_activation_max)) {
        --index;
        continue;
      }
      tflite::reference_integer_ops::MaxPool(op, shape.Shape(), g_input1, out_shape.Shape(), g_expected);
    }
    Dims inputs = {{1, 0}};
    Dims outputs = {{1, 1}};
    std::memset(g_output, 0x55, sizeof(g_output));
    std::memset(float_output, 0x55, sizeof(float_output));
    const int8_t* expected = other ? reinterpret_cast<const int8_t*>(float_expected) : g_expected;
    const int8_t* actual = other ? reinterpret_cast<const int8_t*>(float_output) : g_output;
    const int bytes = out_shape.Count() * (other ? 4 : 1);
    if (!RunAndCompare(tally, keras_shufflenet::Register_MAX_POOL_2D(), tensors, 2, inputs, outputs, &params,
                       expected, actual, bytes, index)) {
      std::printf("MAX_POOL_2D case %d: Prepare failed on a valid case\n", index);
      ++tally.mismatches;
    }
    ++(other ? tally.stock_cases : tally.handled_cases);
  }
  // Inconsistent quantization: another output zero point than the input's.
  Dims shape = {{4, 1, 4, 4, 8}}, out_shape = {{4, 1, 2, 2, 8}};
  QuantizedTensor qi, qo;
  qi.scales.data[0] = qo.scales.data[0] = 0.1f;
  qi.zero_points.data[0] = 3;
  qo.zero_points.data[0] = 4;
  TfLiteTensor tensors[2] = {qi.Make(kTfLiteInt8, g_input1, shape), qo.Make(kTfLiteInt8, g_output, out_shape)};
  TfLitePoolParams params = {};
  params.padding = kTfLitePaddingValid;
  params.stride_width = params.stride_height = params.filter_width = params.filter_height = 2;
  Dims inputs = {{1, 0}};
  Dims outputs = {{1, 1}};
  if (RunAndCompare(tally, keras_shufflenet::Register_MAX_POOL_2D(), tensors, 2, inputs, outputs, &params, g_output,
                    g_output, 0, -1)) {
    std::printf("MAX_POOL_2D: Prepare accepted different input and output zero points\n");
    ++tally.mismatches;
  }
  ++tally.refused_cases;
}

}  // namespace

int main(int argc, char* argv[]) {
  const int cases = argc > 1 ? std::atoi(argv[1]) : 350;
  const uint32_t seed = argc > 2 ? static_cast<uint32_t>(std::strtoul(argv[2], nullptr, 10)) : 1;
  Random random(seed);
  Tally tallies[6] = {{"REQUANTIZE"}, {"ADD"}, {"CONV_2D"}, {"MEAN"}, {"MAX_POOL_2D"}, {"TRANSPOSE"}};
  TestRequantize(random, 1000000, tallies[0]);
  TestAdd(random, cases, tallies[1]);
  TestConv(random, cases, tallies[2]);
  TestMean(random, cases, tallies[3]);
  TestMaxPool(random, cases, tallies[4]);
  TestTranspose(random, cases, tallies[5]);
  int mismatches = 0;
  for (const Tally& tally : tallies) {
    std::printf("%s: %d cases handled, %d through the stock kernel, %d refused in Prepare; %d mismatches\n",
                tally.name, tally.handled_cases, tally.stock_cases, tally.refused_cases, tally.mismatches);
    mismatches += tally.mismatches;
  }
  std::printf(mismatches == 0 ? "All outputs bit-identical to TFLM's reference.\n" : "MISMATCHES: %d\n", mismatches);
  return mismatches == 0 ? 0 : 1;
}
