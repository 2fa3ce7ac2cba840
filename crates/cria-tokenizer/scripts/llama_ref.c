// Reference dump from llama.cpp's libllama for the tokenizer fixtures (see gen_fixtures.py).
//
//   llama_ref MODEL.gguf TEXT_FILE...
//
// Loads only the vocabulary, then prints for the vocabulary:
//   INFO n_vocab bos eos eot add_bos add_eos        (-1 for "none")
//   EOG id...                                       every id with llama_vocab_is_eog
// and for each text file (its raw bytes are the text):
//   ENC add_special parse_special id...             llama_tokenize, all four flag combinations
//   DEC remove_special unparse_special HEX          llama_detokenize of the ENC 1 1 ids
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void quiet(enum ggml_log_level level, const char * text, void * user) {
    (void) level; (void) text; (void) user;
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf TEXT_FILE...\n", argv[0]);
        return 1;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    struct llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    printf("INFO %d %d %d %d %d %d\n", n_vocab, llama_vocab_bos(vocab), llama_vocab_eos(vocab), llama_vocab_eot(vocab),
           llama_vocab_get_add_bos(vocab), llama_vocab_get_add_eos(vocab));
    printf("EOG");
    for (int id = 0; id < n_vocab; id++) {
        if (llama_vocab_is_eog(vocab, id)) printf(" %d", id);
    }
    printf("\n");

    for (int f = 2; f < argc; f++) {
        FILE * fp = fopen(argv[f], "rb");
        if (!fp) { fprintf(stderr, "cannot open %s\n", argv[f]); return 1; }
        fseek(fp, 0, SEEK_END);
        long len = ftell(fp);
        fseek(fp, 0, SEEK_SET);
        char * text = malloc(len + 1);
        if (fread(text, 1, len, fp) != (size_t) len) { fprintf(stderr, "short read %s\n", argv[f]); return 1; }
        fclose(fp);
        text[len] = 0;

        int cap = (int) len + 16;
        llama_token * ids = malloc(sizeof(llama_token) * cap);
        int n_full = 0;
        for (int as = 0; as <= 1; as++) {
            for (int ps = 0; ps <= 1; ps++) {
                int n = llama_tokenize(vocab, text, (int) len, ids, cap, as, ps);
                if (n < 0) { fprintf(stderr, "tokenize failed\n"); return 1; }
                printf("ENC %d %d", as, ps);
                for (int i = 0; i < n; i++) printf(" %d", ids[i]);
                printf("\n");
                n_full = n;
            }
        }
        // ids now hold the ENC 1 1 result
        int tcap = 16 * n_full + 64;
        char * out = malloc(tcap);
        for (int rs = 0; rs <= 1; rs++) {
            for (int us = 0; us <= 1; us++) {
                int n = llama_detokenize(vocab, ids, n_full, out, tcap, rs, us);
                if (n < 0) { fprintf(stderr, "detokenize failed\n"); return 1; }
                printf("DEC %d %d ", rs, us);
                for (int i = 0; i < n; i++) printf("%02x", (unsigned char) out[i]);
                printf("\n");
            }
        }
        free(out);
        free(ids);
        free(text);
    }
    llama_model_free(model);
    return 0;
}
