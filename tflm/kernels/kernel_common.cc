#include "kernel_common.h"

namespace keras_shufflenet {
namespace {

// Runs `function` with node->user_data set to the stock kernel's data: the
// stock kernel reads its own struct there, the project kernel keeps its own.
TfLiteStatus WithStockData(void* stock_data, TfLiteContext* context, TfLiteNode* node,
                           TfLiteStatus (*function)(TfLiteContext*, TfLiteNode*)) {
  void* own_data = node->user_data;
  node->user_data = stock_data;
  const TfLiteStatus status = function(context, node);
  node->user_data = own_data;
  return status;
}

}  // namespace

TfLiteStatus PrepareStock(const TFLMRegistration& stock, void** stock_data, TfLiteContext* context,
                          TfLiteNode* node) {
  // TFLM gives a builtin operator's init its builtin data and a length of 0.
  *stock_data = stock.init == nullptr ? nullptr
                                      : stock.init(context, static_cast<const char*>(node->builtin_data), 0);
  if (stock.prepare == nullptr) return kTfLiteOk;
  return WithStockData(*stock_data, context, node, stock.prepare);
}

TfLiteStatus InvokeStock(const TFLMRegistration& stock, void* stock_data, TfLiteContext* context,
                         TfLiteNode* node) {
  return WithStockData(stock_data, context, node, stock.invoke);
}

}  // namespace keras_shufflenet
