/* Host/board entry point; boards with their own startup code call setup() and
   loop() from there instead of compiling this file. */

#include <cstdlib>

#include "main_functions.h"
#include "sample_input_data.h"

#ifdef KS_MARKERS
#include "markers.h"
#include "tensorflow/lite/micro/micro_log.h"
#endif

int main(int argc, char* argv[]) {
#ifdef KS_MARKERS
  StackPaint();
#endif
  if (!setup()) return EXIT_FAILURE;  // setup() printed why.
  // One inference per sample is enough on a host or an emulator (`shufflenet N`
  // runs N); on a board, loop() would run forever on camera frames.
  const int inferences = argc > 1 ? std::atoi(argv[1]) : kNumSamples;
  for (int i = 0; i < inferences; ++i) {
    if (!loop()) return EXIT_FAILURE;
  }
#ifdef KS_MARKERS
  MicroPrintf("Stack: %d bytes used.", static_cast<int>(StackUsedBytes()));
#endif
  return 0;
}
