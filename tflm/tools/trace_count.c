/* Counts the instructions of one TFLM Invoke(), in total and per operator,
   from qemu's `-d in_asm,exec,nochain` log read on stdin.

   in_asm prints each translation block's instructions once, when qemu
   translates it ("0x000080a0:  b580  push {r7, lr}" lines after an "IN:"
   line); exec with nochain prints one "Trace" line per execution of a block,
   with its guest address in the second '/'-separated field inside brackets.
   A block's instruction count is added at each execution between the first
   ks_marker_invoke_begin and the next ks_marker_invoke_end (tflm/markers.cc);
   ks_marker_op_begin and ks_marker_op_end delimit the operators.

   Usage: trace_count INVOKE_BEGIN INVOKE_END OP_BEGIN OP_END < log
   (addresses in hex). Prints "invoke N" and one "op I N" line per operator.
   A reference-kernel trace is gigabytes of text, hence C and not Python. */

#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TABLE_BITS 21
#define TABLE_SIZE (1u << TABLE_BITS)
#define MAX_OPS 4096

static uint64_t keys[TABLE_SIZE];
static uint32_t counts[TABLE_SIZE];

static uint32_t *slot(uint64_t pc, int insert) {
  uint32_t i = (uint32_t)((pc >> 1) * 2654435761u) & (TABLE_SIZE - 1);
  while (keys[i] != 0 && keys[i] != pc + 1) i = (i + 1) & (TABLE_SIZE - 1);
  if (keys[i] == 0) {
    if (!insert) return NULL;
    keys[i] = pc + 1;
    counts[i] = 0;
  }
  return &counts[i];
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s INVOKE_BEGIN INVOKE_END OP_BEGIN OP_END < qemu.log\n", argv[0]);
    return 2;
  }
  uint64_t marker[4];
  for (int i = 0; i < 4; ++i) marker[i] = strtoull(argv[i + 1], NULL, 16);
  // A larger pipe buffer (where stdin is a pipe) means fewer wake-ups of qemu.
  fcntl(0, F_SETPIPE_SZ, 1 << 20);
  static uint64_t per_op[MAX_OPS];
  static char line[4096];
  uint32_t *block = NULL;
  int counting = 0, done = 0, in_op = 0, ops = 0;
  uint64_t total = 0;
  while (fgets(line, sizeof(line), stdin)) {
    if (line[0] == '0' && line[1] == 'x') {
      if (block == NULL) block = slot(strtoull(line, NULL, 16), 1), *block = 0;
      ++*block;
    } else if (line[0] == 'T') {
      block = NULL;
      const char *p = strchr(line, '[');
      p = p ? strchr(p, '/') : NULL;
      if (p == NULL) continue;
      uint64_t pc = strtoull(p + 1, NULL, 16);
      if (pc == marker[0] && !done) {
        counting = 1;
      } else if (pc == marker[1] && counting) {
        counting = 0;
        done = 1;
      } else if (pc == marker[2] && counting) {
        if (ops < MAX_OPS) per_op[ops] = 0;
        ++ops;
        in_op = 1;
      } else if (pc == marker[3]) {
        in_op = 0;
      }
      if (counting) {
        uint32_t *n = slot(pc, 0);
        uint64_t insns = n ? *n : 0;
        total += insns;
        if (in_op && ops <= MAX_OPS) per_op[ops - 1] += insns;
      }
    } else {
      block = NULL;
    }
  }
  if (!done) {
    fprintf(stderr, "trace_count: no complete Invoke() between the markers in the log\n");
    return 1;
  }
  printf("invoke %llu\n", (unsigned long long)total);
  for (int i = 0; i < ops && i < MAX_OPS; ++i) printf("op %d %llu\n", i, (unsigned long long)per_op[i]);
  return 0;
}
