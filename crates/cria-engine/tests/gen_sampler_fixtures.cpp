// Writes tests/fixtures/samplers_llama_cpp.json: what llama.cpp's own samplers (libllama) do to
// fixed candidate lists, for crates/cria-engine/tests/samplers.rs to compare cria's stages with.
// Built and run by gen_sampler_fixtures.sh against the llama.cpp tree in $CRIA_REF_DIR/llama.cpp.
//
// Every case drives one sampler the way llama.cpp's tests/test-sampling.cpp does: a
// llama_token_data_array built by hand (no model), optional accepted history, then
// llama_sampler_apply; the surviving candidates (id, logit, p) are recorded. DRY with string
// breakers needs a vocabulary: a vocab-only GGUF is loaded, and the token texts and
// tokenizations the breaker processing looks at are written out too, so the Rust test can replay
// the processing without a tokenizer.

#include "llama.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

extern struct llama_sampler * llama_sampler_init_dry_testing(
    float dry_multiplier, float dry_base, int32_t dry_allowed_length, int32_t dry_penalty_last_n,
    const std::vector<std::vector<llama_token>> & seq_breakers);

// Deterministic logits: xorshift64*, uniform in [-6, 6), rounded to 1e-4 so ties are unlikely
// and the JSON text round-trips exactly through f32.
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float next_logit() {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    const uint64_t r = rng_state * 0x2545F4914F6CDD1Dull;
    const double u = (double)(r >> 11) / 9007199254740992.0;
    return (float)(std::round((u * 12.0 - 6.0) * 1e4) / 1e4);
}

static std::vector<float> random_logits(size_t n) {
    std::vector<float> v(n);
    for (auto & x : v) {
        x = next_logit();
    }
    return v;
}

static std::string fmt(float x) {
    if (std::isinf(x) && x < 0) {
        return "null"; // -inf: JSON has no infinities
    }
    char buf[64];
    snprintf(buf, sizeof buf, "%.9g", x);
    return buf;
}

template <typename T, typename F> static std::string list(const std::vector<T> & v, F f) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); i++) {
        s += (i ? "," : "") + f(v[i]);
    }
    return s + "]";
}

static std::string ints(const std::vector<llama_token> & v) {
    return list(v, [](llama_token t) { return std::to_string(t); });
}

static std::string floats(const std::vector<float> & v) {
    return list(v, fmt);
}

static std::string bytes(const std::string & s) {
    std::vector<unsigned char> b(s.begin(), s.end());
    return list(b, [](unsigned char c) { return std::to_string((int)c); });
}

// One application: input candidates -> output candidates (+ selected index, -1 if none).
static std::string step(llama_sampler * smpl, const std::vector<llama_token> & ids, const std::vector<float> & logits) {
    std::vector<llama_token_data> cur;
    for (size_t i = 0; i < ids.size(); i++) {
        cur.push_back({ ids[i], logits[i], 0.0f });
    }
    llama_token_data_array arr = { cur.data(), cur.size(), -1, false };
    llama_sampler_apply(smpl, &arr);
    std::vector<llama_token> out_ids;
    std::vector<float> out_logits, out_p;
    for (size_t i = 0; i < arr.size; i++) {
        out_ids.push_back(arr.data[i].id);
        out_logits.push_back(arr.data[i].logit);
        out_p.push_back(arr.data[i].p);
    }
    return "{\"ids\":" + ints(ids) + ",\"logits\":" + floats(logits) + ",\"out_ids\":" + ints(out_ids) +
           ",\"out_logits\":" + floats(out_logits) + ",\"out_probs\":" + floats(out_p) +
           ",\"selected\":" + std::to_string(arr.selected) + "}";
}

static std::vector<llama_token> iota(size_t n) {
    std::vector<llama_token> v(n);
    for (size_t i = 0; i < n; i++) {
        v[i] = (llama_token)i;
    }
    return v;
}

static std::vector<std::string> cases;

static void add_case(const std::string & name, const std::string & sampler, const std::string & params,
                     const std::vector<llama_token> & history, const std::vector<std::string> & steps) {
    cases.push_back("{\"name\":\"" + name + "\",\"sampler\":\"" + sampler + "\",\"params\":{" + params +
                    "},\"history\":" + ints(history) + ",\"steps\":" + list(steps, [](const std::string & s) { return s; }) + "}");
}

static std::string kv(const char * k, double v) {
    char buf[96];
    snprintf(buf, sizeof buf, "\"%s\":%.9g", k, v);
    return buf;
}

static void dry_tokens_case(const std::string & name, float mult, float base, int allowed, int last_n,
                            const std::vector<std::vector<llama_token>> & breakers,
                            const std::vector<llama_token> & history, size_t n_vocab) {
    llama_sampler * s = llama_sampler_init_dry_testing(mult, base, allowed, last_n, breakers);
    for (auto t : history) {
        llama_sampler_accept(s, t);
    }
    const std::string st = step(s, iota(n_vocab), random_logits(n_vocab));
    llama_sampler_free(s);
    std::string params = kv("multiplier", mult) + "," + kv("base", base) + "," + kv("allowed_length", allowed) + "," +
                         kv("last_n", last_n) + ",\"breakers\":" +
                         list(breakers, [](const std::vector<llama_token> & b) { return ints(b); });
    add_case(name, "dry_tokens", params, history, { st });
}

int main(int argc, char ** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s VOCAB.gguf OUT.json\n", argv[0]);
        return 1;
    }
    llama_backend_init();

    // --- DRY with token breakers (llama_sampler_init_dry_testing, as test-sampling.cpp) -------
    // llama.cpp's own test cases first, then longer histories.
    dry_tokens_case("test_sampling_1", 1.0f, 1.1f, 2, 4, {}, { 0, 1 }, 4);
    dry_tokens_case("test_sampling_2", 1.0f, 1.1f, 2, 5, {}, { 0, 1, 2, 0, 1 }, 4);
    dry_tokens_case("test_sampling_3", 1.0f, 1.1f, 2, 6, { { 3 } }, { 0, 1, 3, 4, 0, 1 }, 5);
    dry_tokens_case("test_sampling_4", 2.0f, 1.1f, 2, 5, {}, { 0, 1, 2, 0, 1 }, 5);
    dry_tokens_case("test_sampling_5", 1.0f, 1.1f, 4, 7, {}, { 0, 1, 2, 3, 4, 0, 1 }, 5);
    {
        // A period-7 pattern with noise; several repeat lengths end in different tokens.
        std::vector<llama_token> h;
        const llama_token pat[] = { 1, 2, 3, 4, 5, 6, 7 };
        for (int r = 0; r < 6; r++) {
            for (int i = 0; i < 7; i++) {
                h.push_back(pat[i]);
            }
            h.push_back((llama_token)(8 + r % 3));
        }
        h.push_back(1);
        h.push_back(2);
        h.push_back(3);
        dry_tokens_case("period7_no_breakers", 0.8f, 1.75f, 2, 64, {}, h, 12);
        dry_tokens_case("period7_window16", 0.8f, 1.75f, 2, 16, {}, h, 12);
        dry_tokens_case("period7_allowed0", 0.5f, 1.3f, 0, 64, {}, h, 12);
        dry_tokens_case("period7_allowed5", 1.5f, 2.0f, 5, 64, {}, h, 12);
        // Token 5 is a single-token breaker: repeats cannot reach past it, and it is never penalized.
        dry_tokens_case("period7_breaker_single", 0.8f, 1.75f, 2, 64, { { 5 } }, h, 12);
        // Multi-token breakers: 2 followed by 3 (matches at the end), 6 7 8 (head 6, tail 7 8).
        dry_tokens_case("period7_breaker_multi", 0.8f, 1.75f, 1, 64, { { 2, 3 }, { 6, 7, 8 } }, h, 12);
        dry_tokens_case("period7_breaker_multi_old", 0.8f, 1.75f, 1, 64, { { 6, 7, 8 }, { 9, 1 } }, h, 12);
    }
    {
        // A long exact repeat: the exponent is clamped to ln(FLT_MAX) / ln(base).
        std::vector<llama_token> h;
        for (int i = 0; i < 300; i++) {
            h.push_back((llama_token)(i % 3));
        }
        dry_tokens_case("long_repeat_clamped", 1e-30f, 1.75f, 2, 400, {}, h, 4);
    }

    // --- XTC (probability 1: the coin always says yes, so no RNG is involved) ----------------
    for (float t : { 0.01f, 0.05f, 0.1f, 0.2f, 0.3f }) {
        for (size_t min_keep : { (size_t)0, (size_t)1, (size_t)18 }) {
            const size_t n = 20;
            auto logits = random_logits(n);
            // Make a few tokens clearly dominant so several are above the threshold.
            logits[3] += 4.0f;
            logits[11] += 3.5f;
            logits[17] += 3.0f;
            llama_sampler * s = llama_sampler_init_xtc(1.0f, t, min_keep, 0);
            const std::string st = step(s, iota(n), logits);
            llama_sampler_free(s);
            add_case("xtc_t" + fmt(t) + "_mk" + std::to_string(min_keep), "xtc",
                     kv("probability", 1.0) + "," + kv("threshold", t) + "," + kv("min_keep", (double)min_keep), {}, { st });
        }
    }

    // --- top-n-sigma ------------------------------------------------------------------------
    for (float n : { 0.5f, 1.0f, 1.5f, 2.5f }) {
        const size_t nv = 32;
        auto logits = random_logits(nv);
        logits[5] = -INFINITY; // banned earlier: excluded from the mean and deviation
        logits[9] = -INFINITY;
        logits[20] += 5.0f;
        llama_sampler * s = llama_sampler_init_top_n_sigma(n);
        const std::string st = step(s, iota(nv), logits);
        llama_sampler_free(s);
        add_case("top_n_sigma_" + fmt(n), "top_n_sigma", kv("n", n), {}, { st });
    }

    // --- dynamic temperature (temp-ext) -----------------------------------------------------
    for (auto tre : std::vector<std::vector<float>>{ { 0.8f, 0.5f, 1.0f }, { 1.0f, 0.3f, 2.0f }, { 0.4f, 0.6f, 0.5f }, { 1.5f, 1.0f, 1.0f } }) {
        const size_t nv = 24;
        auto logits = random_logits(nv);
        llama_sampler * s = llama_sampler_init_temp_ext(tre[0], tre[1], tre[2]);
        const std::string st = step(s, iota(nv), logits);
        llama_sampler_free(s);
        add_case("temp_ext_" + fmt(tre[0]) + "_" + fmt(tre[1]) + "_" + fmt(tre[2]), "temp_ext",
                 kv("temp", tre[0]) + "," + kv("range", tre[1]) + "," + kv("exponent", tre[2]), {}, { st });
    }

    // --- mirostat v1 and v2: several steps, each recording the truncated list and the token
    // llama.cpp drew (the Rust side follows the same draws, so mu evolves the same way) --------
    {
        const int n_vocab = 200;
        for (int version : { 1, 2 }) {
            for (auto te : std::vector<std::vector<float>>{ { 5.0f, 0.1f }, { 3.0f, 0.5f } }) {
                llama_sampler * s = version == 1 ? llama_sampler_init_mirostat(n_vocab, 1234, te[0], te[1], 100)
                                                 : llama_sampler_init_mirostat_v2(1234, te[0], te[1]);
                std::vector<std::string> steps;
                for (int k = 0; k < 12; k++) {
                    auto logits = random_logits(n_vocab);
                    for (auto & l : logits) {
                        l *= 1.5f; // a peakier distribution so the truncation matters
                    }
                    steps.push_back(step(s, iota(n_vocab), logits));
                }
                llama_sampler_free(s);
                add_case("mirostat_v" + std::to_string(version) + "_tau" + fmt(te[0]) + "_eta" + fmt(te[1]),
                         version == 1 ? "mirostat" : "mirostat_v2",
                         kv("n_vocab", n_vocab) + "," + kv("tau", te[0]) + "," + kv("eta", te[1]) + "," + kv("m", 100), {}, steps);
            }
        }
    }

    // --- DRY with string breakers over a real vocabulary (llama_sampler_init_dry) -----------
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_tokens = llama_vocab_n_tokens(vocab);
    auto tokenize = [&](const std::string & text) {
        std::vector<llama_token> t(text.size() + 8);
        int n = llama_tokenize(vocab, text.data(), (int)text.size(), t.data(), (int)t.size(), false, false);
        t.resize(n < 0 ? 0 : n);
        return t;
    };
    auto piece = [&](llama_token id) {
        std::vector<char> buf(256);
        int n = llama_detokenize(vocab, &id, 1, buf.data(), (int)buf.size(), false, true);
        if (n < 0) {
            buf.resize(-n);
            n = llama_detokenize(vocab, &id, 1, buf.data(), (int)buf.size(), false, true);
        }
        return std::string(buf.data(), n);
    };
    const std::vector<std::string> breakers = { "\n", ":", "\"", "*", "### Response" };
    // What the breaker processing reads: the text of every token that holds the first byte of a
    // breaker (no other token can match), and the tokenization of every breaker suffix.
    std::vector<std::string> piece_entries, tok_entries;
    for (llama_token id = 0; id < n_tokens; id++) {
        const std::string w = piece(id);
        for (const auto & b : breakers) {
            if (w.find(b[0]) != std::string::npos) {
                piece_entries.push_back("[" + std::to_string(id) + "," + bytes(w) + "]");
                break;
            }
        }
    }
    for (const auto & b : breakers) {
        for (size_t i = 1; i < b.size(); i++) {
            tok_entries.push_back("[" + bytes(b.substr(i)) + "," + ints(tokenize(b.substr(i))) + "]");
        }
    }
    std::vector<const char *> cb;
    for (const auto & b : breakers) {
        cb.push_back(b.c_str());
    }
    const char * texts[] = {
        "the cat sat on the mat and the cat sat on the mat and the cat sat on the",
        "Name: Bob\nAge: 3\nName: Bob\nAge: 3\nName: Bob\nAge:",
        "### Response the quick brown fox ### Response the quick brown fox ### Response the quick",
        "\"yes\" said the cat, \"yes\" said the cat, *yes* said the cat, \"yes\" said the",
    };
    for (int ti = 0; ti < 4; ti++) {
        const auto history = tokenize(texts[ti]);
        // Candidates: every token of the history plus 30 others, with random logits.
        std::vector<llama_token> ids;
        for (auto t : history) {
            bool seen = false;
            for (auto u : ids) {
                seen |= u == t;
            }
            if (!seen) {
                ids.push_back(t);
            }
        }
        for (int k = 0; k < 30; k++) {
            ids.push_back((llama_token)(100 + k * 997 % (n_tokens - 200)));
        }
        for (int last_n : { 64, 12 }) {
            llama_sampler * s = llama_sampler_init_dry(vocab, 0.8f, 1.75f, 2, last_n, cb.data(), cb.size());
            for (auto t : history) {
                llama_sampler_accept(s, t);
            }
            const std::string st = step(s, ids, random_logits(ids.size()));
            llama_sampler_free(s);
            add_case("dry_strings_text" + std::to_string(ti) + "_last" + std::to_string(last_n), "dry_strings",
                     kv("multiplier", 0.8) + "," + kv("base", 1.75) + "," + kv("allowed_length", 2) + "," + kv("last_n", last_n),
                     history, { st });
        }
    }
    llama_model_free(model);

    FILE * f = fopen(argv[2], "w");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", argv[2]);
        return 1;
    }
    fprintf(f, "{\"generator\":\"crates/cria-engine/tests/gen_sampler_fixtures.cpp (libllama)\",\n");
    fprintf(f, "\"dry_vocab\":{\"n_tokens\":%d,\"breakers\":%s,\n\"pieces\":[%s],\n\"tokenize\":[%s]},\n", n_tokens,
            list(breakers, bytes).c_str(), [&] {
                std::string s;
                for (size_t i = 0; i < piece_entries.size(); i++) {
                    s += (i ? ",\n" : "") + piece_entries[i];
                }
                return s;
            }().c_str(),
            [&] {
                std::string s;
                for (size_t i = 0; i < tok_entries.size(); i++) {
                    s += (i ? "," : "") + tok_entries[i];
                }
                return s;
            }().c_str());
    fprintf(f, "\"cases\":[\n");
    for (size_t i = 0; i < cases.size(); i++) {
        fprintf(f, "%s%s\n", cases[i].c_str(), i + 1 < cases.size() ? "," : "");
    }
    fprintf(f, "]}\n");
    fclose(f);
    fprintf(stderr, "wrote %zu cases, %zu token texts to %s\n", cases.size(), piece_entries.size(), argv[2]);
    return 0;
}
