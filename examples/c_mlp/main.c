/* c_mlp: a C11 program that trains a two-layer MLP through strata's C API.
 *
 * The program owns the model: it runs forward and backward itself (plain
 * loops, fp32) on a synthetic regression task, y = sin(x . a) + 0.5 x0 x1,
 * and hands strata the gradients; strata owns the fp32 master weights, the
 * AdamW states (offloaded to host memory, as the ds_config below says) and
 * writes each updated weight back into the program's arrays (host
 * bindings). Two buckets, one per layer, reported in backward order.
 *
 * Prints the loss as it goes; exits 1 unless the loss fell at least tenfold
 * (and 2 on a strata error, with strata's message).
 *
 *   c_mlp [STEPS]       default 300 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <strata/strata.h>

enum { kIn = 4, kHidden = 32, kOut = 1, kSamples = 256 };

static const char* const kConfig =
    "{"
    "  \"train_micro_batch_size_per_gpu\": 256,"
    "  \"gradient_accumulation_steps\": 1,"
    "  \"optimizer\": {\"type\": \"AdamW\","
    "                \"params\": {\"lr\": 0.01, \"betas\": [0.9, 0.999], \"eps\": 1e-8,"
    "                             \"weight_decay\": 0.0}},"
    "  \"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": {\"device\": \"cpu\"}}"
    "}";

/* The model: weights the program computes with, and their gradients. */
typedef struct mlp {
  float w1[kHidden * kIn], b1[kHidden], w2[kOut * kHidden], b2[kOut];
  float gw1[kHidden * kIn], gb1[kHidden], gw2[kOut * kHidden], gb2[kOut];
} mlp;

static unsigned long long g_rng = 0x9E3779B97F4A7C15ull;

/* Uniform in [-1, 1): xorshift64*, so every run sees the same data. */
static float uniform(void) {
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  const unsigned long long r = g_rng * 0x2545F4914F6CDD1Dull;
  return (float)((double)(r >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

static int check(strata_status status, const char* what) {
  if (status == STRATA_STATUS_OK) return 0;
  fprintf(stderr, "c_mlp: %s failed: %s: %s\n", what, strata_status_name(status),
          strata_last_error());
  return 1;
}

/* Mean squared error over the data set; with grads != 0 also its gradient
 * times `scale` (the loss scale strata asks for) into m's grad arrays. */
static double forward_backward(mlp* m, const float* x, const float* y, int grads, double scale) {
  double loss = 0;
  if (grads) {
    memset(m->gw1, 0, sizeof m->gw1);
    memset(m->gb1, 0, sizeof m->gb1);
    memset(m->gw2, 0, sizeof m->gw2);
    memset(m->gb2, 0, sizeof m->gb2);
  }
  for (int s = 0; s < kSamples; ++s) {
    const float* xs = x + s * kIn;
    float h[kHidden]; /* tanh activations */
    float out = m->b2[0];
    for (int j = 0; j < kHidden; ++j) {
      float z = m->b1[j];
      for (int i = 0; i < kIn; ++i) z += m->w1[j * kIn + i] * xs[i];
      h[j] = tanhf(z);
      out += m->w2[j] * h[j];
    }
    const float err = out - y[s];
    loss += (double)err * err;
    if (!grads) continue;
    /* d(mean err^2)/d out = 2 err / N, times the loss scale. */
    const float dout = (float)(2.0 * err / kSamples * scale);
    m->gb2[0] += dout;
    for (int j = 0; j < kHidden; ++j) {
      m->gw2[j] += dout * h[j];
      const float dz = dout * m->w2[j] * (1.0f - h[j] * h[j]);
      m->gb1[j] += dz;
      for (int i = 0; i < kIn; ++i) m->gw1[j * kIn + i] += dz * xs[i];
    }
  }
  return loss / kSamples;
}

/* Registers one array as a param of `bucket` and gives strata its start value. */
static int add(strata_optimizer* opt, const char* name, float* value, const float* grad,
               size_t numel, int bucket, int group, int* handle) {
  strata_param_desc d = {name, numel, bucket, group, STRATA_BINDING_HOST, value, grad};
  return check(strata_add_param(opt, &d, handle), name);
}

int main(int argc, char** argv) {
  const int steps = argc > 1 ? atoi(argv[1]) : 300;
  if (steps < 1) {
    fprintf(stderr, "usage: c_mlp [STEPS >= 1]\n");
    return 2;
  }
  if (check(STRATA_CHECK_VERSION(), "version check")) return 2;
  printf("strata %s (header %s)\n", strata_version(), STRATA_VERSION_STRING);

  static float x[kSamples * kIn], y[kSamples];
  float a[kIn];
  for (int i = 0; i < kIn; ++i) a[i] = uniform();
  for (int s = 0; s < kSamples; ++s) {
    float dot = 0;
    for (int i = 0; i < kIn; ++i) {
      x[s * kIn + i] = uniform();
      dot += x[s * kIn + i] * a[i];
    }
    y[s] = sinf(2.0f * dot) + 0.5f * x[s * kIn] * x[s * kIn + 1];
  }

  static mlp m;
  static float init_w1[kHidden * kIn], init_w2[kOut * kHidden];
  static const float zeros[kHidden] = {0};
  for (int k = 0; k < kHidden * kIn; ++k) init_w1[k] = uniform() / sqrtf((float)kIn);
  for (int k = 0; k < kOut * kHidden; ++k) init_w2[k] = uniform() / sqrtf((float)kHidden);

  strata_optimizer* opt = NULL;
  if (check(strata_optimizer_create(kConfig, NULL, &opt), "strata_optimizer_create")) return 2;
  int rc = 2;
  strata_group_hparams hp;
  int group = 0;
  int p_w1 = 0, p_b1 = 0, p_w2 = 0, p_b2 = 0;
  strata_dtype dtype = STRATA_DTYPE_FLOAT32;
  if (check(strata_group_defaults(opt, &hp), "strata_group_defaults") ||
      check(strata_add_group(opt, &hp, &group), "strata_add_group") ||
      /* Bucket 0 is the output layer: backward reaches it first. */
      add(opt, "out.weight", m.w2, m.gw2, kOut * kHidden, 0, group, &p_w2) ||
      add(opt, "out.bias", m.b2, m.gb2, kOut, 0, group, &p_b2) ||
      add(opt, "hidden.weight", m.w1, m.gw1, kHidden * kIn, 1, group, &p_w1) ||
      add(opt, "hidden.bias", m.b1, m.gb1, kHidden, 1, group, &p_b1) ||
      check(strata_finalize(opt), "strata_finalize") ||
      check(strata_compute_dtype(opt, &dtype), "strata_compute_dtype")) {
    goto done;
  }
  if (dtype != STRATA_DTYPE_FLOAT32) {
    fprintf(stderr, "c_mlp: the config must train in fp32 (this program's arrays are float)\n");
    goto done;
  }
  /* strata writes the start values into the bound arrays too. */
  if (check(strata_set_value(opt, p_w1, init_w1, kHidden * kIn), "set_value hidden.weight") ||
      check(strata_set_value(opt, p_b1, zeros, kHidden), "set_value hidden.bias") ||
      check(strata_set_value(opt, p_w2, init_w2, kOut * kHidden), "set_value out.weight") ||
      check(strata_set_value(opt, p_b2, zeros, kOut), "set_value out.bias")) {
    goto done;
  }

  const double first = forward_backward(&m, x, y, 0, 1.0);
  printf("step %4d  loss %.6f\n", 0, first);
  double loss = first;
  for (int step = 1; step <= steps; ++step) {
    double scale = 1.0;
    if (check(strata_begin_step(opt, NAN, &scale), "strata_begin_step")) goto done;
    loss = forward_backward(&m, x, y, 1, scale);
    strata_step_result r;
    if (check(strata_grad_ready(opt, 0), "strata_grad_ready") ||
        check(strata_grad_ready(opt, 1), "strata_grad_ready") ||
        check(strata_finish_step(opt, &r), "strata_finish_step")) {
      goto done;
    }
    if (step % 50 == 0 || step == steps) {
      printf("step %4d  loss %.6f  grad_norm %.4f  lr %.4g%s\n", step, loss, r.grad_norm, r.lr,
             r.skipped ? "  (skipped)" : "");
    }
  }
  loss = forward_backward(&m, x, y, 0, 1.0);
  printf("final loss %.6f (start %.6f, %.1fx lower)\n", loss, first, first / loss);
  rc = loss * 10.0 <= first ? 0 : 1;
  if (rc != 0) fprintf(stderr, "c_mlp: the loss did not fall tenfold\n");
done:
  strata_optimizer_destroy(opt);
  return rc;
}
