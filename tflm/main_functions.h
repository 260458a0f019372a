/* Entry points of the ShuffleNet TFLite Micro application, in the Arduino style
   of TFLM's examples: setup() once, then loop() forever. */

#ifndef KERAS_SHUFFLENET_TFLM_MAIN_FUNCTIONS_H_
#define KERAS_SHUFFLENET_TFLM_MAIN_FUNCTIONS_H_

// Loads the model, registers its operators and allocates the tensor arena.
// Returns false (after printing why) if the application cannot run.
bool setup();

// Runs one inference on the next sample image and prints the top class and
// whether the output equals the host TFLM output written at export. Returns
// false if there is no interpreter or the inference failed.
bool loop();

#endif  // KERAS_SHUFFLENET_TFLM_MAIN_FUNCTIONS_H_
