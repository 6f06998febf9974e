/* Built against an installed strata (find_package or pkg-config): checks
 * that header and library agree, and that a call reaches the library and
 * reports a config error the way the C API promises. Exit 0 on success. */
#include <stdio.h>
#include <string.h>

#include <strata/strata.h>

int main(void) {
  if (STRATA_CHECK_VERSION() != STRATA_STATUS_OK) {
    fprintf(stderr, "%s\n", strata_last_error());
    return 1;
  }
  strata_optimizer* opt = NULL;
  /* train_batch_size must be a number: the library names the key. */
  const strata_status s = strata_optimizer_create("{\"train_batch_size\": \"lots\"}", NULL, &opt);
  if (s != STRATA_STATUS_INVALID_ARGUMENT || opt != NULL ||
      strstr(strata_last_error(), "train_batch_size") == NULL) {
    fprintf(stderr, "unexpected: %s: %s\n", strata_status_name(s), strata_last_error());
    return 1;
  }
  printf("strata %s: header %s, config error reported: %s\n", strata_version(),
         STRATA_VERSION_STRING, strata_last_error());
  return 0;
}
