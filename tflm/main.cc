/* Host/board entry point; boards with their own startup code call setup() and
   loop() from there instead of compiling this file. */

#include "main_functions.h"

// Three inferences are enough to show the result on a host; on a board, loop()
// would run forever.
constexpr int kHostIterations = 3;

int main(int argc, char* argv[]) {
  setup();
  for (int i = 0; i < kHostIterations; ++i) {
    loop();
  }
  return 0;
}
