/* llama.cpp's own greedy loop over one image and a prompt, for comparing one set of llama.cpp
 * libraries with another (x86 against aarch64 under qemu-user) without Python: the cheap,
 * CI-sized part of scripts/arm64-check.sh (its `cgreedy` stage builds and runs this).
 *
 *   arm64_greedy MODEL MMPROJ IMAGE PROMPT N_TOKENS   the greedy token ids, one line: "ids: 12 7 ..."
 *   arm64_greedy --follow "12 7 ..." MODEL MMPROJ IMAGE PROMPT N_TOKENS
 *                                    the logits before each of those tokens ("logits ID: ..." lines),
 *                                    decoding those tokens instead of the greedy ones
 *   arm64_greedy --probe             llama.cpp's system info and the auxv words
 *
 * --follow lets two machines be compared along one token path (another machine's greedy answer):
 * how far their logits are apart at each step, and whether a step where they chose differently
 * was a tie within that distance.
 *
 * The prompt is LFM2-VL's chat template with the image first, as lfm2-edge renders it.
 * Only llama.h, mtmd.h and mtmd-helper.h, the public C API that llama-cpp-python wraps.
 * Each C object has one owner and is freed in the reverse order of its creation. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

#include "llama.h"
#include "mtmd.h"
#include "mtmd-helper.h"

static void quiet(enum ggml_log_level level, const char *text, void *user) {
    (void) user;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static int probe(void) {
    printf("system_info: %s\n", llama_print_system_info());
#if defined(__aarch64__)
    printf("hwcap: %lu %lu\n", getauxval(AT_HWCAP), getauxval(AT_HWCAP2));
#else
    printf("hwcap: 0 0\n");
#endif
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--probe") == 0) return probe();
    const char *follow = NULL;
    if (argc > 2 && strcmp(argv[1], "--follow") == 0) { follow = argv[2]; argv += 2; argc -= 2; }
    if (argc != 6) {
        fprintf(stderr, "usage: %s [--follow IDS] MODEL MMPROJ IMAGE PROMPT N_TOKENS | --probe\n", argv[0]);
        return 2;
    }
    const int n_predict = atoi(argv[5]);
    llama_log_set(quiet, NULL);
    mtmd_helper_log_set(quiet, NULL);
    llama_backend_init();

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "error: cannot load %s\n", argv[1]); return 1; }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 4096;
    cp.n_batch = 512;
    cp.n_threads = cp.n_threads_batch = 2;
    struct llama_context *ctx = llama_init_from_model(model, cp);

    struct mtmd_context_params mcp = mtmd_context_params_default();
    mcp.use_gpu = false;
    mcp.n_threads = 2;
    mcp.print_timings = false;
    mcp.warmup = false;
    mtmd_context *mctx = ctx ? mtmd_init_from_file(argv[2], model, mcp) : NULL;
    struct mtmd_helper_bitmap_wrapper image = {NULL, NULL};
    if (mctx) image = mtmd_helper_bitmap_init_from_file(mctx, argv[3], false, mtmd_helper_init_opt_default());
    if (!ctx || !mctx || !image.bitmap) {
        fprintf(stderr, "error: cannot set up the context, the projector %s or the image %s\n", argv[2], argv[3]);
        return 1;
    }

    size_t size = strlen(argv[4]) + 256;
    char *prompt = malloc(size);
    snprintf(prompt, size, "<|startoftext|><|im_start|>user\n%s%s<|im_end|>\n<|im_start|>assistant\n",
             mtmd_default_marker(), argv[4]);
    struct mtmd_input_text text = {prompt, strlen(prompt), false, true};
    mtmd_input_chunks *chunks = mtmd_input_chunks_init();
    const mtmd_bitmap *bitmaps[1] = {image.bitmap};
    llama_pos n_past = 0;
    int rc = mtmd_tokenize(mctx, chunks, &text, bitmaps, 1);
    if (rc == 0) rc = mtmd_helper_eval_chunks(mctx, ctx, chunks, 0, 0, 512, true, &n_past);
    if (rc != 0) fprintf(stderr, "error: the prompt did not evaluate (%d)\n", rc);

    struct llama_sampler *greedy = llama_sampler_init_greedy();
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    printf("prompt_tokens: %zu\n", mtmd_helper_get_n_tokens(chunks));
    if (!follow) printf("ids:");
    char *next = (char *) follow;
    for (int i = 0; rc == 0 && i < n_predict; i++) {
        llama_token token;
        if (follow) {
            char *end;
            token = (llama_token) strtol(next, &end, 10);
            if (end == next) break;  /* the followed answer has ended */
            next = end;
            const float *logits = llama_get_logits_ith(ctx, -1);
            printf("logits %d:", token);
            for (int j = 0; j < n_vocab; j++) printf(" %.9g", logits[j]);
            printf("\n");
        } else {
            token = llama_sampler_sample(greedy, ctx, -1);
            printf(" %d", token);
        }
        if (llama_vocab_is_eog(vocab, token)) break;
        if (llama_decode(ctx, llama_batch_get_one(&token, 1)) != 0) { rc = 1; fprintf(stderr, "error: decode failed\n"); }
    }
    if (!follow) printf("\n");

    llama_sampler_free(greedy);
    mtmd_input_chunks_free(chunks);
    free(prompt);
    mtmd_bitmap_free(image.bitmap);
    mtmd_free(mctx);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return rc == 0 ? 0 : 1;
}
