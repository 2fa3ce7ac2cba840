//! The `tokenizer.ggml.*` metadata of an HF folder, as llama.cpp's `convert_hf_to_gguf.py`
//! (LlamaModel.set_vocab) and gguf-py's `SpecialVocab` write it:
//!
//! - `tokenizer.model` present: SentencePiece (`tokenizer.ggml.model = llama`, pre `default`):
//!   pieces, scores and types read from the protobuf, padded to the config's vocab size with
//!   `[PAD{i}]` (score -10000, UNUSED); `added_tokens.json` and tokenizer_config's
//!   `added_tokens_decoder` override entries (score -1000, CONTROL or USER_DEFINED).
//! - else `tokenizer.json` with a byte-level BPE model (LLaMA 3): `gpt2`, the vocabulary with added
//!   tokens (CONTROL when special or looking special, else USER_DEFINED), `[PAD{i}]` holes, merges,
//!   and the pre-tokenizer name found by hashing the ids of the converter's check text, mapped by
//!   the converter's own table ([`PRE_HASHES`]); an unknown hash is refused as there, except for
//!   a tokenizer built exactly as LLaMA 3's ([`is_llama3_bpe`]: `llama-bpe`).
//! - then the special token ids, add_bos/add_eos/add_sep, chat template, as SpecialVocab finds them
//!   in tokenizer.json's post_processor, tokenizer_config.json and config.json.

use cria_core::gguf::Value;
use cria_core::{Error, Result};
use serde_json::Value as Json;
use std::path::Path;

/// SentencePiece piece types (sentencepiece_model.proto) = the GGUF token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// The text whose token ids identify a BPE pre-tokenizer (the converter's `chktxt`).
pub const CHKTXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\u{1F680} (normal) \u{1F636}\u{200D}\u{1F32B}\u{FE0F} (multiple emojis concatenated) \u{2705} \u{1F999}\u{1F999} 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 \u{1780}\u{17B6}\u{1793}\u{17CB}\u{178F}\u{17C2}\u{1796}\u{17B7}\u{179F}\u{17C1}\u{179F}\u{17A2}\u{17B6}\u{1785}\u{1F601} ?\u{6211}\u{60F3}\u{5728}apple\u{5DE5}\u{4F5C}1314151\u{5929}\u{FF5E} ------======= \u{43D}\u{435}\u{449}\u{43E} \u{43D}\u{430} \u{411}\u{44A}\u{43B}\u{433}\u{430}\u{440}\u{441}\u{43A}\u{438} ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// sha256 of `str(ids)` of [`CHKTXT`] -> `tokenizer.ggml.pre`: every entry of llama.cpp's
/// `get_vocab_base_pre` (conversion/base.py, llama.cpp 0c1e570), extracted as data, in its order
/// (a chain of `if`s there, so the last match wins).
pub const PRE_HASHES: &[(&str, &str)] = &[
    (
        "b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b",
        "chatglm-bpe",
    ), // https://huggingface.co/THUDM/glm-4-9b-chat
    (
        "81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516",
        "chatglm-bpe",
    ), // https://huggingface.co/THUDM/glm-4-9b-chat
    (
        "a1336059768a55c99a734006ffb02203cd450fed003e9a71886c88acf24fdbc2",
        "glm4",
    ), // https://huggingface.co/THUDM/glm-4-9b-hf
    (
        "9ca2dd618e8afaf09731a7cf6e2105b373ba6a1821559f258b272fe83e6eb902",
        "glm4",
    ), // https://huggingface.co/zai-org/GLM-4.5-Air
    (
        "cdf5f35325780597efd76153d4d1c16778f766173908894c04afc20108536267",
        "glm4",
    ), // https://huggingface.co/zai-org/GLM-4.7-Flash
    (
        "1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35",
        "minerva-7b",
    ), // https://huggingface.co/sapienzanlp/Minerva-7B-base-v1.0
    (
        "7e57df22b1fe23a7b1e1c7f3dc4e3f96d43a4eb0836d0c6bdc3436d7b2f1c664",
        "hunyuan",
    ), // https://huggingface.co/tencent/Hunyuan-A13B-Instruct
    (
        "bba3b3366b646dbdded5dbc42d59598b849371afc42f7beafa914afaa5b70aa6",
        "hunyuan-dense",
    ), // https://huggingface.co/tencent/Hunyuan-4B-Instruct
    (
        "e6ddf9c6686791c12d698d34c31ab9be1fea9af5a3d9a6909783ab382198ae1c",
        "hy_v4",
    ), // https://huggingface.co/tencent/Hy4-preview
    (
        "a6b57017d60e6edb4d88ecc2845188e0eb333a70357e45dcc9b53964a73bbae6",
        "falcon-h1",
    ), // https://huggingface.co/tiiuae/Falcon-H1-0.5B-Base
    (
        "60476e1243776c4fb1b993dbd7a5f15ac22f83c80afdf425fa5ae01c8d44ef86",
        "falcon-h1",
    ), // https://huggingface.co/tiiuae/Falcon-H1-1B-Base
    (
        "3eda48b4c4dc7de733d1a8b3e3b4a85243dbbf704da2ee9d42c6beced8897896",
        "falcon-h1",
    ), // https://huggingface.co/tiiuae/Falcon-H1-7B-Base
    (
        "48f8e02c0359c0bbdd82f26909171fac1c18a457bb47573ed1fe3bbb2c1cfd4b",
        "falcon-h1",
    ), // https://huggingface.co/tiiuae/Falcon-H1-34B-Base
    (
        "81212dc7cdb7e0c1074ca62c5aeab0d43c9f52b8a737be7b12a777c953027890",
        "kimi-k2",
    ), // https://huggingface.co/moonshotai/Kimi-K2-Base
    (
        "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c",
        "qwen2",
    ), // https://huggingface.co/Qwen/Qwen3-Embedding-0.6B
    (
        "1444df51289cfa8063b96f0e62b1125440111bc79a52003ea14b6eac7016fd5f",
        "qwen35",
    ), // https://huggingface.co/openbmb/MiniCPM-V-4_6
    (
        "66b8d4e19ab16c3bfd89bce5d785fb7e0155e8648708a1f42077cb9fe002c273",
        "grok-2",
    ), // https://huggingface.co/alvarobartt/grok-2-tokenizer
    (
        "b3d1dd861f1d4c5c0d2569ce36baf3f90fe8a102db3de50dd71ff860d91be3df",
        "jina-v2-de",
    ), // https://huggingface.co/aari1995/German_Semantic_V3
    (
        "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4",
        "gpt-2",
    ), // https://huggingface.co/evilfreelancer/ruGPT3XL
    (
        "9e454714343b69b99b71795c1d27a68c2a1d15dab111f4d353109f966af29da7",
        "lfm2",
    ), // https://huggingface.co/LiquidAI/LFM2.5-8B-A1B
    (
        "846deafc5b0fa786186fa4ae6c7b49903cf2f1d1895bdb80b9120d60be135252",
        "gemma4",
    ), // https://huggingface.co/danish-foundation-models/DFM-Mimir
    (
        "0a766d034107bc736a3f2dc4968fd62e54a3570f1454443e0c5a4cc6bd7941ed",
        "spark2_5",
    ), // https://huggingface.co/XHToken/Spark-X2.5-1.7B
    (
        "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5",
        "llama-bpe",
    ), // https://huggingface.co/meta-llama/Meta-Llama-3-8B
    (
        "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754",
        "deepseek-llm",
    ), // https://huggingface.co/deepseek-ai/deepseek-llm-7b-base
    (
        "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821",
        "deepseek-coder",
    ), // https://huggingface.co/deepseek-ai/deepseek-coder-6.7b-base
    (
        "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed",
        "falcon",
    ), // https://huggingface.co/tiiuae/falcon-7b
    (
        "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f",
        "bert-bge",
    ), // https://huggingface.co/BAAI/bge-small-en-v1.5
    (
        "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e",
        "falcon3",
    ), // https://huggingface.co/tiiuae/Falcon3-7B-Base
    (
        "8e62295832751ca1e8f92f2226f403dea30dc5165e448b5bfa05af5340c64ec7",
        "bert-bge-large",
    ), // https://huggingface.co/BAAI/bge-large-zh-v1.5
    (
        "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166",
        "mpt",
    ), // https://huggingface.co/mosaicml/mpt-7b
    (
        "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34",
        "starcoder",
    ), // https://huggingface.co/bigcode/starcoder2-3b
    (
        "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454",
        "gpt-2",
    ), // https://huggingface.co/openai-community/gpt2
    (
        "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3",
        "stablelm2",
    ), // https://huggingface.co/stabilityai/stablelm-2-zephyr-1_6b
    (
        "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff",
        "refact",
    ), // https://huggingface.co/smallcloudai/Refact-1_6-base
    (
        "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8",
        "command-r",
    ), // https://huggingface.co/CohereForAI/c4ai-command-r-v01
    (
        "d772b220ace2baec124bed8cfafce0ead7d6c38a4b65ef11261cf9d5d62246d1",
        "tiny_aya",
    ), // https://huggingface.co/CohereLabs/tiny-aya-base
    (
        "52df12b4c8d4176e7481aab4b6e8454d1fd0a210a04a574f6d4e067d10e23c3e",
        "cohere2moe",
    ), // https://huggingface.co/CohereLabs/North-Mini-Code-1.0
    (
        "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea",
        "qwen2",
    ), // https://huggingface.co/Qwen/Qwen1.5-7B
    (
        "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166",
        "olmo",
    ), // https://huggingface.co/allenai/OLMo-1.7-7B-hf
    (
        "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e",
        "dbrx",
    ), // https://huggingface.co/databricks/dbrx-base
    (
        "c7699093ba4255a91e702aa38a596aa81669f3525dae06c2953267dde580f448",
        "jina-v1-en",
    ), // https://huggingface.co/jinaai/jina-reranker-v1-tiny-en
    (
        "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f",
        "jina-v2-en",
    ), // https://huggingface.co/jinaai/jina-embeddings-v2-base-en
    (
        "171aeeedd6fb548d418a7461d053f11b6f1f1fc9b387bd66640d28a4b9f5c643",
        "jina-v2-es",
    ), // https://huggingface.co/jinaai/jina-embeddings-v2-base-es
    (
        "27949a2493fc4a9f53f5b9b029c82689cfbe5d3a1929bb25e043089e28466de6",
        "jina-v2-de",
    ), // https://huggingface.co/jinaai/jina-embeddings-v2-base-de
    (
        "a023e9fdc5a11f034d3ef515b92350e56fb2af1f66c6b6811a4444ea9bf8763d",
        "jina-v5-nano",
    ), // https://huggingface.co/jinaai/jina-embeddings-v5-text-nano
    (
        "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d",
        "smaug-bpe",
    ), // https://huggingface.co/abacusai/Smaug-Llama-3-70B-Instruct
    (
        "c7ea5862a53e4272c035c8238367063e2b270d51faa48c0f09e9d5b54746c360",
        "poro-chat",
    ), // https://huggingface.co/LumiOpen/Poro-34B-chat
    (
        "7967bfa498ade6b757b064f31e964dddbb80f8f9a4d68d4ba7998fcf281c531a",
        "jina-v2-code",
    ), // https://huggingface.co/jinaai/jina-embeddings-v2-base-code
    (
        "7fc505bd3104ca1083b150b17d088b59534ede9bde81f0dd2090967d7fe52cee",
        "viking",
    ), // https://huggingface.co/LumiOpen/Viking-7B
    (
        "b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901",
        "jais",
    ), // https://huggingface.co/core42/jais-13b
    (
        "bc5108ee1eb6a3d600cadd065f63190fbd0554dbc9e4bbd6a0d977970afc8d2a",
        "jais-2",
    ), // https://huggingface.co/inceptionai/Jais-2-8B-Chat
    (
        "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f",
        "codeshell",
    ), // https://huggingface.co/WisdomShell/CodeShell-7B
    (
        "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e",
        "tekken",
    ), // https://huggingface.co/mistralai/Mistral-Nemo-Base-2407
    (
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249",
        "smollm",
    ), // https://huggingface.co/HuggingFaceTB/SmolLM-135M
    (
        "3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7",
        "bloom",
    ), // https://huggingface.co/bigscience/bloom
    (
        "bc01ce58980e1db43859146dc51b1758b3b88729b217a74792e9f8d43e479d21",
        "gpt3-finnish",
    ), // https://huggingface.co/TurkuNLP/gpt3-finnish-small
    (
        "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae",
        "exaone",
    ), // https://huggingface.co/LGAI-EXAONE/EXAONE-3.0-7.8B-Instruct
    (
        "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085",
        "phi-2",
    ), // https://huggingface.co/microsoft/phi-2
    (
        "60824e3c0d9401f89943cbb2fff727f0e2d4c545ba4df2d6e4f09a6db0f5b450",
        "chameleon",
    ), // https://huggingface.co/facebook/chameleon-7b
    (
        "8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65",
        "roberta-bpe",
    ), // https://huggingface.co/sentence-transformers/stsb-roberta-base
    (
        "ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb",
        "gigachat",
    ), // https://huggingface.co/ai-sage/GigaChat-20B-A3B-instruct
    (
        "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1",
        "megrez",
    ), // https://huggingface.co/Infinigence/Megrez-3B-Instruct
    (
        "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5",
        "deepseek-v3",
    ), // https://huggingface.co/deepseek-ai/DeepSeek-V3
    (
        "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5",
        "deepseek-r1-qwen",
    ), // https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
    (
        "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e",
        "gpt-4o",
    ), // https://huggingface.co/Xenova/gpt-4o
    (
        "7dec86086fcc38b66b7bc1575a160ae21cf705be7718b9d5598190d7c12db76f",
        "superbpe",
    ), // https://huggingface.co/UW/OLMo2-8B-SuperBPE-t180k
    (
        "1994ffd01900cfb37395608534236ecd63f2bd5995d6cb1004dda1af50240f15",
        "trillion",
    ), // https://huggingface.co/trillionlabs/Trillion-7B-preview
    (
        "96a5f08be6259352137b512d4157e333e21df7edd3fcd152990608735a65b224",
        "bailingmoe",
    ), // https://huggingface.co/inclusionAI/Ling-lite
    (
        "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406",
        "llama4",
    ), // https://huggingface.co/meta-llama/Llama-4-Scout-17B-16E-Instruct
    (
        "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3",
        "pixtral",
    ), // https://huggingface.co/mistral-community/pixtral-12b
    (
        "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec",
        "seed-coder",
    ), // https://huggingface.co/ByteDance-Seed/Seed-Coder-8B-Base
    (
        "b0a6b1c0bd5998ebd9df08611efde34a4ff03faed45ae09c43e6b31ebd4b94cf",
        "a.x-4.0",
    ), // https://huggingface.co/skt/A.X-4.0
    (
        "f6791d196f87ce6b56a7d234be618e0d58f8cda3549416635b2bebcd22cd95c4",
        "midm-2.0",
    ), // https://huggingface.co/K-intelligence/Midm-2.0-Base-Instruct
    (
        "169bf0296a13c4d9b7672313f749eb36501d931022de052aad6e36f2bf34dd51",
        "lfm2",
    ), // https://huggingface.co/LiquidAI/LFM2.5-350M
    (
        "2085e1638f6c377a0aa4ead21b27bb4cb941bf800df86ed391011769c1758dfb",
        "exaone4",
    ), // https://huggingface.co/LGAI-EXAONE/EXAONE-4.0-32B
    (
        "a1e163ecab2e718a4c829d1148b6e86824ec36163bb71941c3dca9cd5ac25756",
        "mellum",
    ), // https://huggingface.co/JetBrains/Mellum-4b-base
    (
        "a0b64b4385f123663873756336c085744376d015ff328bb1d901598f63c44152",
        "modern-bert",
    ), // https://huggingface.co/answerdotai/ModernBERT-base
    (
        "49fc0303c9e0d2c2c565c510f64b2d9b271276acdcdadff733249eda9f7d59df",
        "afmoe",
    ), // https://huggingface.co/arcee-ai/Trinity-Tokenizer
    (
        "9b1be57e70d20d9501b2b3186e792d81181ae36ada3903c26f9fea418cf87206",
        "bailingmoe2",
    ), // https://huggingface.co/inclusionAI/Ling-mini-base-2.0
    (
        "53e325976a6e142379c19b09afcae354f2f496f147afa8f9e189a33fe4e3024e",
        "granite-docling",
    ), // https://huggingface.co/ibm-granite/granite-docling-258M
    (
        "f4f37b6c8eb9ea29b3eac6bb8c8487c5ab7885f8d8022e67edc1c68ce8403e95",
        "minimax-m2",
    ), // https://huggingface.co/MiniMaxAI/MiniMax-M2
    (
        "4a2e2abae11ca2b86d570fc5b44be4d5eb5e72cc8f22dd136a94b37da83ab665",
        "kormo",
    ), // https://huggingface.co/KORMo-Team/KORMo-tokenizer
    (
        "9d70134b369a70e5735009b6de918f7581b5211f7c074d1f89f753aea8248af1",
        "youtu",
    ), // https://huggingface.co/tencent/Youtu-LLM-2B
    (
        "16389f0a1f51ee53e562ffd51c371dc508639ab0e4261502071836e50e223e91",
        "solar-open",
    ), // https://huggingface.co/upstage/Solar-Open-100B
    (
        "6c81ce329e0802883b22eabab0d3fa48357337ef1ecb45443828bf1f6254833f",
        "exaone-moe",
    ), // https://huggingface.co/LGAI-EXAONE/K-EXAONE-236B-A23B
    (
        "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4",
        "qwen35",
    ), // https://huggingface.co/Qwen/Qwen3.5-9B-Instruct
    (
        "b4b8ca1f9769494fbd956ebc4c249de6131fb277a4a3345a7a92c7dd7a55808d",
        "joyai-llm",
    ), // https://huggingface.co/jdopensource/JoyAI-LLM-Flash
    (
        "e4d54df1ebc1f2b91acd986c5b51aa50837d5faf7c7398e73c1f9e9ee5d19869",
        "kanana2",
    ), // https://huggingface.co/kakaocorp/kanana-2-30b-a3b-instruct-2601
    (
        "862f827721df956049dff5ca81a57f29e575280bc622e290d3bf4e35eca29015",
        "f2llmv2",
    ), // https://huggingface.co/codefuse-ai/F2LLM-v2-4B
    (
        "62f6fb0a6fd5098caeabb19b07a5c1099cafc8b9c40eab6ea89ece4ec02fbc57",
        "sarvam-moe",
    ), // https://huggingface.co/sarvamai/sarvam-30b
    (
        "f728162c1315c26e40249849799b4ba3fe584c32084b4795b03eb295e63cb5af",
        "talkie",
    ), // https://huggingface.co/lewtun/talkie-1930-13b-it-hf
    (
        "36f3066e97b7f3994b379aaacde306c1444c6ae84e81a5ae3cd2b7ed3b8c42d4",
        "minicpm5",
    ), // https://huggingface.co/openbmb/MiniCPM5-1B
    (
        "f241072145675bf8322086f115aebad05e9f869557a238bf2150a2a417d1bf60",
        "granite-embed-multi-97m",
    ), // https://huggingface.co/ibm-granite/granite-embedding-97m-multilingual-r2
    (
        "789696f5946cc0fc59371f39f6097cafed196b3acded6140432f26bbb1ae1669",
        "granite-embed-multi-311m",
    ), // https://huggingface.co/ibm-granite/granite-embedding-311m-multilingual-r2
    (
        "9dcf830ee9990cdbf78cc523a5f7bd9ad8f3f9890c2d3581d2785ad10f07049d",
        "mellum2",
    ), // https://huggingface.co/JetBrains/Mellum2-12B-A2.5B-Base
    (
        "972da7b59cec44d1f0a490a86c96df53859e486e481563e5dddac155013d87ac",
        "laguna",
    ), // https://huggingface.co/poolside/Laguna-XS.2
    (
        "653660222fb704f61cbf2b618a8ae6502b7f8b20c980f9a5de07ed78e13319cd",
        "ufakzeka",
    ), // https://huggingface.co/ufakai/ufakzeka-1
];

/// The metadata keys of one vocabulary, in the converter's order.
pub(crate) fn vocab_metadata(
    dir: &Path,
    hparams: &Json,
    pre_override: Option<&str>,
) -> Result<Vec<(String, Value)>> {
    let mut out: Vec<(String, Value)> = Vec::new();
    let tcfg = read_json_opt(&dir.join("tokenizer_config.json"))?;
    if let Some(b) = tcfg.as_ref().and_then(|c| c["add_prefix_space"].as_bool()) {
        out.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(b)));
    }
    let vocab_size = hparams["vocab_size"].as_u64().map(|v| v as usize);
    let spm = dir.join("tokenizer.model");
    let n_vocab;
    let load_merges;
    if spm.is_file() {
        let (tokens, scores, types) = sentencepiece_vocab(dir, &spm, vocab_size, tcfg.as_ref())?;
        n_vocab = tokens.len();
        out.push(("tokenizer.ggml.model".into(), Value::from("llama")));
        out.push(("tokenizer.ggml.pre".into(), Value::from("default")));
        out.push(("tokenizer.ggml.tokens".into(), Value::from(tokens)));
        out.push(("tokenizer.ggml.scores".into(), Value::from(scores)));
        out.push(("tokenizer.ggml.token_type".into(), Value::from(types)));
        load_merges = false;
    } else if dir.join("tokenizer.json").is_file() {
        let (tokens, types, pre) = bpe_vocab(dir, vocab_size, pre_override)?;
        n_vocab = tokens.len();
        out.push(("tokenizer.ggml.model".into(), Value::from("gpt2")));
        out.push(("tokenizer.ggml.pre".into(), Value::from(pre.as_str())));
        out.push(("tokenizer.ggml.tokens".into(), Value::from(tokens)));
        out.push(("tokenizer.ggml.token_type".into(), Value::from(types)));
        load_merges = true;
    } else {
        return Err(Error::msg(format!(
            "{}: no tokenizer (neither tokenizer.model nor tokenizer.json)",
            dir.display()
        )));
    }
    special_vocab(dir, tcfg, load_merges, Some(n_vocab), &mut out)?;
    // LlamaModel.set_vocab's per-model fixes, keyed on the config's vocab_size as there.
    match vocab_size {
        // CodeLlama's infill tokens.
        Some(32016) => {
            for (k, id) in [
                ("prefix", 32007),
                ("suffix", 32008),
                ("middle", 32009),
                ("eot", 32010),
            ] {
                set(
                    &mut out,
                    &format!("tokenizer.ggml.{k}_token_id"),
                    Value::U32(id),
                );
            }
        }
        // "granite small models" (the converter applies it to every LLaMA with this size).
        Some(49152) => set(&mut out, "tokenizer.ggml.add_bos_token", Value::Bool(false)),
        _ => {}
    }
    Ok(out)
}

/// gguf-py's add_key_value: a key written again keeps its place and takes the new value.
fn set(out: &mut Vec<(String, Value)>, key: &str, v: Value) {
    match out.iter_mut().find(|(k, _)| k == key) {
        Some(e) => e.1 = v,
        None => out.push((key.to_string(), v)),
    }
}

pub(crate) fn read_json_opt(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Format {
            path: path.to_path_buf(),
            format: "JSON",
            msg: e.to_string(),
        })
}

/// One `SentencePiece` entry of a `ModelProto`.
struct Piece {
    piece: String,
    score: f32,
    kind: i32,
}

/// Reads `tokenizer.model` (a protobuf `ModelProto`): field 1 (repeated `SentencePiece`: 1 piece
/// string, 2 score float, 3 type enum, NORMAL when absent). Other fields are skipped.
fn read_pieces(path: &Path) -> Result<Vec<Piece>> {
    let buf = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |m: &str| Error::Format {
        path: path.to_path_buf(),
        format: "SentencePiece model",
        msg: m.to_string(),
    };
    let mut pieces = Vec::new();
    let mut r = Proto { b: &buf, at: 0 };
    while !r.done() {
        let (field, wire) = r.key().ok_or_else(|| bad("truncated field key"))?;
        if field == 1 && wire == 2 {
            let body = r.bytes().ok_or_else(|| bad("truncated piece"))?;
            let mut p = Proto { b: body, at: 0 };
            let mut piece = Piece {
                piece: String::new(),
                score: 0.0,
                kind: NORMAL,
            };
            while !p.done() {
                let (f, w) = p.key().ok_or_else(|| bad("truncated piece field"))?;
                match (f, w) {
                    (1, 2) => {
                        let s = p.bytes().ok_or_else(|| bad("truncated piece text"))?;
                        piece.piece = String::from_utf8(s.to_vec())
                            .map_err(|_| bad("piece text is not UTF-8"))?;
                    }
                    (2, 5) => {
                        piece.score =
                            f32::from_le_bytes(p.fixed4().ok_or_else(|| bad("truncated score"))?)
                    }
                    (3, 0) => piece.kind = p.varint().ok_or_else(|| bad("truncated type"))? as i32,
                    _ => p.skip(w).ok_or_else(|| bad("bad piece field"))?,
                }
            }
            pieces.push(piece);
        } else {
            r.skip(wire).ok_or_else(|| bad("bad field"))?;
        }
    }
    if pieces.is_empty() {
        return Err(bad("no pieces"));
    }
    Ok(pieces)
}

struct Proto<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Proto<'a> {
    fn done(&self) -> bool {
        self.at >= self.b.len()
    }
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at)?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn key(&mut self) -> Option<(u64, u64)> {
        let k = self.varint()?;
        Some((k >> 3, k & 7))
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        self.take(n)
    }
    fn fixed4(&mut self) -> Option<[u8; 4]> {
        self.take(4).map(|s| s.try_into().unwrap())
    }
    fn skip(&mut self, wire: u64) -> Option<()> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            _ => None,
        }
    }
}

/// The converter's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{FF5C}") && t.ends_with("\u{FF5C}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

type SpmVocab = (Vec<String>, Vec<f32>, Vec<i32>);

/// `_create_vocab_sentencepiece`.
fn sentencepiece_vocab(
    dir: &Path,
    path: &Path,
    vocab_size: Option<usize>,
    tcfg: Option<&Json>,
) -> Result<SpmVocab> {
    let pieces = read_pieces(path)?;
    let n = vocab_size.unwrap_or(pieces.len());
    let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; n];
    let mut types = vec![UNUSED; n];
    for (id, p) in pieces.iter().enumerate().take(n) {
        // The converter asks IsUnknown, IsControl, IsUnused, IsByte; user-defined pieces stay NORMAL.
        let t = match p.kind {
            UNKNOWN | CONTROL | UNUSED | BYTE => p.kind,
            _ => NORMAL,
        };
        tokens[id] = p.piece.clone();
        scores[id] = p.score;
        types[id] = t;
    }
    if let Some(added) = read_json_opt(&dir.join("added_tokens.json"))? {
        if let Some(obj) = added.as_object() {
            for (text, id) in obj {
                let Some(id) = id.as_u64().map(|i| i as usize) else {
                    continue;
                };
                if id >= n {
                    continue;
                }
                tokens[id] = text.clone();
                scores[id] = -1000.0;
                types[id] = USER_DEFINED;
            }
        }
    }
    if let Some(dec) = tcfg.and_then(|c| c["added_tokens_decoder"].as_object()) {
        for (id, data) in dec {
            let Ok(id) = id.parse::<usize>() else {
                continue;
            };
            let Some(mut text) = data["content"].as_str().map(str::to_string) else {
                continue;
            };
            if id >= n {
                continue;
            }
            if data["special"].as_bool() == Some(true) || looks_special(&text) {
                types[id] = CONTROL;
            } else {
                text = text.replace('\u{2581}', " ");
                types[id] = USER_DEFINED;
            }
            scores[id] = -1000.0;
            tokens[id] = text;
        }
    }
    Ok((tokens, scores, types))
}

/// Whether the byte-level BPE tokenizer.json of `dir` (parsed: `j`) is, in everything
/// llama.cpp's `llama-bpe` pre-tokenizer type fixes, LLaMA 3's: no normalizer; the pre-tokenizer
/// cria-tokenizer recognises as LLaMA 3's (`Split` of LLaMA 3's regex, Isolated, then `ByteLevel`
/// without its own regex or prefix space); a BPE model with `ignore_merges` (llama.cpp sets it
/// for that type) and no dropout, unknown token, prefix or suffix. Such a tokenizer (one trained
/// by `cria tokenizer train`, or any vocabulary trained with LLaMA 3's recipe) has a check hash
/// of its own that no table lists, and llama.cpp tokenizes it exactly under `llama-bpe`; so cria
/// writes that name instead of refusing the unknown hash (llama.cpp's converter still refuses).
pub fn is_llama3_bpe(dir: &Path, j: &Json) -> bool {
    let m = &j["model"];
    let empty = |v: &Json| v.is_null() || v == "";
    let model_ok = m["type"] == "BPE"
        && m["ignore_merges"].as_bool() == Some(true)
        && m["byte_fallback"].as_bool() != Some(true)
        && m["dropout"].is_null()
        && m["unk_token"].is_null()
        && empty(&m["continuing_subword_prefix"])
        && empty(&m["end_of_word_suffix"]);
    if !j["normalizer"].is_null() || !model_ok {
        return false;
    }
    let cfg = dir.join("tokenizer_config.json");
    cria_tokenizer::Tokenizer::from_hf(
        &dir.join("tokenizer.json"),
        cfg.is_file().then_some(cfg.as_path()),
    )
    .is_ok_and(|t| t.pre_tokenizer() == Some(cria_tokenizer::PreTokenizer::Llama3))
}

/// `get_vocab_base` + `get_vocab_base_pre` for a byte-level BPE tokenizer.json.
fn bpe_vocab(
    dir: &Path,
    vocab_size: Option<usize>,
    pre_override: Option<&str>,
) -> Result<(Vec<String>, Vec<i32>, String)> {
    let path = dir.join("tokenizer.json");
    let j = read_json_opt(&path)?.unwrap_or_default();
    let model = &j["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(Error::Unsupported(format!(
            "{}: tokenizer model type {:?} (cria convert reads BPE tokenizer.json or a \
             SentencePiece tokenizer.model)",
            path.display(),
            model["type"]
        )));
    }
    if model["byte_fallback"].as_bool() == Some(true) {
        return Err(Error::Unsupported(format!(
            "{}: a SentencePiece-style tokenizer.json (byte_fallback) without tokenizer.model",
            path.display()
        )));
    }
    let vocab = model["vocab"].as_object().ok_or_else(|| Error::Format {
        path: path.clone(),
        format: "tokenizer.json",
        msg: "model.vocab is not an object".into(),
    })?;
    let mut by_id: std::collections::BTreeMap<usize, (String, Option<bool>)> = Default::default();
    for (t, id) in vocab {
        if let Some(id) = id.as_u64() {
            by_id.insert(id as usize, (t.clone(), None));
        }
    }
    for a in j["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(t)) = (a["id"].as_u64(), a["content"].as_str()) {
            by_id.insert(id as usize, (t.to_string(), a["special"].as_bool()));
        }
    }
    let max = by_id.keys().next_back().copied().unwrap_or(0);
    let n = vocab_size.unwrap_or(by_id.len());
    if max >= n {
        return Err(Error::msg(format!(
            "{}: token id {max} is not below the config's vocab_size {n}",
            path.display()
        )));
    }
    let pre = match pre_override {
        Some(p) => p.to_string(),
        None => {
            let h = chkhsh(dir)?;
            match PRE_HASHES.iter().rev().find(|(k, _)| *k == h) {
                Some((_, name)) => name.to_string(),
                None if is_llama3_bpe(dir, &j) => "llama-bpe".to_string(),
                None => {
                    return Err(Error::Unsupported(format!(
                        "{}: BPE pre-tokenizer was not recognized (chkhsh {h}); as llama.cpp's \
                         converter, cria knows the pre-tokenizers by this hash. If the tokenizer \
                         splits text as a known one does, name it with --tokenizer-pre (e.g. \
                         llama-bpe)",
                        path.display()
                    )))
                }
            }
        }
    };
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for i in 0..n {
        match by_id.get(&i) {
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(UNUSED);
            }
            Some((t, None)) => {
                tokens.push(t.clone());
                types.push(NORMAL);
            }
            Some((t, Some(special))) => {
                if *special || looks_special(t) {
                    tokens.push(t.clone());
                    types.push(CONTROL);
                } else {
                    tokens.push(t.replace('\u{2581}', " "));
                    types.push(USER_DEFINED);
                }
            }
        }
    }
    Ok((tokens, types, pre))
}

/// The converter's pre-tokenizer hash: sha256 of Python's `str(ids)` for [`CHKTXT`] encoded with
/// the folder's tokenizer, special tokens added as the tokenizer adds them.
pub fn chkhsh(dir: &Path) -> Result<String> {
    use sha2::Digest;
    let cfg = dir.join("tokenizer_config.json");
    let tok = cria_tokenizer::Tokenizer::from_hf(
        &dir.join("tokenizer.json"),
        cfg.is_file().then_some(cfg.as_path()),
    )?;
    let ids = tok.encode(CHKTXT, true, false);
    let s = format!(
        "[{}]",
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(hex(&sha2::Sha256::digest(s.as_bytes())))
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// gguf-py's `SpecialVocab` (load + add_to_gguf): merges, special token ids, add_* flags, chat
/// template, in that order.
fn special_vocab(
    dir: &Path,
    mut tcfg: Option<Json>,
    load_merges: bool,
    n_vocab: Option<usize>,
    out: &mut Vec<(String, Value)>,
) -> Result<()> {
    let mut types: Vec<&'static str> = vec!["bos", "eos", "unk", "sep", "pad", "cls", "mask"];
    let mut ids: Vec<(&'static str, u32)> = Vec::new();
    let mut add: Vec<(&'static str, bool)> = Vec::new();
    let set_add =
        |add: &mut Vec<(&'static str, bool)>, k: &'static str, v: bool, force: bool| match add
            .iter_mut()
            .find(|(t, _)| *t == k)
        {
            Some(e) if force => e.1 = v,
            Some(_) => {}
            None => add.push((k, v)),
        };
    let set_id = |ids: &mut Vec<(&'static str, u32)>, k: &'static str, v: &Json| -> Result<()> {
        let Some(v) = v.as_i64() else {
            return Ok(());
        };
        if v < 0 {
            return Err(Error::msg(format!(
                "invalid value for special token type {k}: {v}"
            )));
        }
        if n_vocab.is_none_or(|n| (v as usize) < n) && !ids.iter().any(|(t, _)| *t == k) {
            ids.push((k, v as u32));
        }
        Ok(())
    };
    let mut merges: Vec<String> = Vec::new();
    let tj = read_json_opt(&dir.join("tokenizer.json"))?;
    let empty = Vec::new();
    let added_tokens = tj
        .as_ref()
        .and_then(|t| t["added_tokens"].as_array())
        .unwrap_or(&empty);
    if let Some(tok) = &tj {
        if load_merges {
            if let Some(m) = tok["model"]["merges"].as_array() {
                for e in m {
                    if let Some(s) = e.as_str() {
                        merges.push(s.to_string());
                    } else if let Some(pair) = e.as_array().filter(|p| p.len() == 2) {
                        let enc = |s: &Json| -> String {
                            s.as_str()
                                .unwrap_or_default()
                                .chars()
                                .map(|c| if c == ' ' { '\u{0120}' } else { c })
                                .collect()
                        };
                        merges.push(format!("{} {}", enc(&pair[0]), enc(&pair[1])));
                    } else {
                        return Err(Error::msg(
                            "tokenizer.json: unknown tokenizer merges format",
                        ));
                    }
                }
            }
        }
        let g = |c: &Option<Json>, k: &str| -> Option<String> {
            c.as_ref().and_then(|c| c[k].as_str()).map(str::to_string)
        };
        let mut special_bos = g(&tcfg, "bos_token");
        let mut special_cls = g(&tcfg, "cls_token");
        let mut special_eos = g(&tcfg, "eos_token");
        let special_sep = g(&tcfg, "sep_token");
        let has_cfg = tcfg
            .as_ref()
            .is_some_and(|c| c.as_object().is_some_and(|o| !o.is_empty()));
        let put = |c: &mut Option<Json>, k: &str, v: &Option<String>| {
            if let (Some(Json::Object(o)), Some(v)) = (c.as_mut(), v) {
                o.insert(k.to_string(), Json::String(v.clone()));
            }
        };
        if special_bos.as_deref().is_none_or(str::is_empty) && special_cls.is_some() && has_cfg {
            special_bos = special_cls.clone();
            put(&mut tcfg, "bos_token", &special_bos);
        }
        if special_eos.as_deref().is_none_or(str::is_empty) && special_sep.is_some() && has_cfg {
            special_eos = special_sep.clone();
            put(&mut tcfg, "eos_token", &special_eos);
        }
        let pp = &tok["post_processor"];
        if pp.is_object() {
            let procs: Vec<&Json> = match pp["processors"].as_array() {
                Some(a) => a.iter().collect(),
                None => vec![pp],
            };
            for p in procs {
                match p["type"].as_str() {
                    Some("ByteLevel") => {
                        set_add(&mut add, "bos", false, false);
                        set_add(&mut add, "eos", false, false);
                    }
                    Some("RobertaProcessing") => {
                        return Err(Error::Unsupported(
                            "tokenizer.json RobertaProcessing post-processor (not a LLaMA tokenizer)"
                                .into(),
                        ));
                    }
                    Some("TemplateProcessing") => {
                        let single = p["single"].as_array().cloned().unwrap_or_default();
                        let pair = p["pair"].as_array().cloned().unwrap_or_default();
                        let sp = |e: &Json| e["SpecialToken"]["id"].as_str().map(str::to_string);
                        let mut special_first = None;
                        let mut special_last = None;
                        if single.len() > 1 {
                            special_first = sp(&single[0]).filter(|s| !s.is_empty());
                            if let Some(first) = &special_first {
                                if !has_cfg {
                                    special_bos = Some(first.clone());
                                } else if Some(first) != special_bos.as_ref()
                                    && Some(first) != special_cls.as_ref()
                                {
                                    if special_bos.as_deref().is_none_or(str::is_empty) {
                                        special_bos = Some(first.clone());
                                        put(&mut tcfg, "bos_token", &special_bos);
                                    }
                                    if special_cls.as_deref().is_none_or(str::is_empty) {
                                        special_cls = Some(first.clone());
                                        put(&mut tcfg, "cls_token", &special_cls);
                                    }
                                }
                                let v = Some(first) == special_bos.as_ref()
                                    || Some(first) == special_cls.as_ref();
                                set_add(&mut add, "bos", v, true);
                            }
                            special_last = sp(&single[single.len() - 1]).filter(|s| !s.is_empty());
                            if let Some(last) = &special_last {
                                if !has_cfg {
                                    special_eos = Some(last.clone());
                                } else if Some(last) != special_eos.as_ref() {
                                    if !types.contains(&"eot") {
                                        types.push("eot");
                                        put(&mut tcfg, "eot_token", &special_eos);
                                    } else if !types.contains(&"eom") {
                                        types.push("eom");
                                        put(&mut tcfg, "eom_token", &special_eos);
                                    }
                                    special_eos = Some(last.clone());
                                    put(&mut tcfg, "eos_token", &special_eos);
                                }
                                let v = Some(last) == special_eos.as_ref();
                                set_add(&mut add, "eos", v, true);
                            }
                        }
                        if !pair.is_empty() {
                            let start = usize::from(
                                special_first.is_some() && sp(&pair[0]) == special_first,
                            );
                            let stop_cut =
                                special_last.is_some() && sp(&pair[pair.len() - 1]) == special_last;
                            let end = pair.len() - usize::from(stop_cut);
                            let tp = if start <= end {
                                &pair[start..end]
                            } else {
                                &[][..]
                            };
                            if !tp.is_empty() {
                                let a = tp[0]["Sequence"]["id"].as_str();
                                let b = tp[tp.len() - 1]["Sequence"]["id"].as_str();
                                if a == Some("A") && b == Some("B") && tp.len() > 2 {
                                    let mid = &tp[1..tp.len() - 1];
                                    let mut add_sep = false;
                                    let is_sep_or_eos = |s: &str| {
                                        Some(s) == special_sep.as_deref()
                                            || Some(s) == special_eos.as_deref()
                                    };
                                    if let Some(e) = sp(&mid[0]).filter(|s| !s.is_empty()) {
                                        if is_sep_or_eos(&e) && special_last.is_none() {
                                            add_sep = true;
                                        }
                                    }
                                    if mid.len() == 2 {
                                        if let Some(e) = sp(&mid[1]).filter(|s| !s.is_empty()) {
                                            if is_sep_or_eos(&e) {
                                                add_sep = true;
                                            }
                                        }
                                    }
                                    set_add(&mut add, "sep", add_sep, true);
                                    if add_sep && special_sep.is_none() && has_cfg {
                                        put(&mut tcfg, "sep_token", &special_eos);
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let mut chat_template: Option<Value> = None;
    if let Some(cfg) = tcfg
        .as_ref()
        .filter(|c| c.as_object().is_some_and(|o| !o.is_empty()))
    {
        let mut alt: Option<Json> = None;
        let jinja = dir.join("chat_template.jinja");
        let cjson = dir.join("chat_template.json");
        if jinja.is_file() {
            let t = std::fs::read_to_string(&jinja).map_err(|source| Error::Io {
                path: jinja.clone(),
                source,
            })?;
            if dir.join("additional_chat_templates").is_dir() {
                return Err(Error::Unsupported(
                    "additional_chat_templates/ (named chat templates)".into(),
                ));
            }
            alt = Some(Json::String(t));
        } else if let Some(j) = read_json_opt(&cjson)? {
            alt = Some(j["chat_template"].clone()).filter(|v| !v.is_null());
        }
        let ct = match cfg.get("chat_template") {
            Some(v) => Some(v.clone()),
            None => alt,
        };
        match ct {
            Some(Json::String(s)) => chat_template = Some(Value::String(s)),
            Some(Json::Array(_)) => {
                return Err(Error::Unsupported(
                    "a list of named chat templates in tokenizer_config.json".into(),
                ))
            }
            _ => {}
        }
        for &typ in &types {
            if let Some(b) = cfg[format!("add_{typ}_token")].as_bool() {
                set_add(&mut add, typ, b, false);
            }
            let content = match &cfg[format!("{typ}_token")] {
                Json::String(s) => s.clone(),
                Json::Object(o) => match o.get("content").and_then(|c| c.as_str()) {
                    Some(s) => s.to_string(),
                    None => continue,
                },
                _ => continue,
            };
            let id = added_tokens
                .iter()
                .find(|a| a["content"].as_str() == Some(content.as_str()))
                .map(|a| a["id"].clone())
                .unwrap_or(Json::Null);
            set_id(&mut ids, typ, &id)?;
        }
    }
    if let Some(cfg) = read_json_opt(&dir.join("config.json"))? {
        for &typ in &types {
            let mut v = cfg[format!("{typ}_token_id")].clone();
            if v.is_null() {
                v = cfg["text_config"][format!("{typ}_token_id")].clone();
            }
            set_id(&mut ids, typ, &v)?;
        }
    }
    if !merges.is_empty() {
        out.push(("tokenizer.ggml.merges".into(), Value::from(merges)));
    }
    for (typ, id) in ids {
        // gguf-py has a writer for these types only; others (cls) are skipped there too.
        let key = match typ {
            "bos" | "eos" | "mask" | "eot" | "eom" => format!("tokenizer.ggml.{typ}_token_id"),
            "unk" => "tokenizer.ggml.unknown_token_id".into(),
            "pad" => "tokenizer.ggml.padding_token_id".into(),
            "sep" => "tokenizer.ggml.seperator_token_id".into(),
            _ => continue,
        };
        out.push((key, Value::U32(id)));
    }
    for (typ, v) in add {
        if !matches!(typ, "bos" | "eos" | "sep") {
            continue; // no gguf-py writer for add_{typ}_token
        }
        out.push((format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(v)));
    }
    if let Some(ct) = chat_template {
        out.push(("tokenizer.chat_template".into(), ct));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn chktxt_is_the_converters() {
        // Python: len(chktxt), sha256(chktxt.encode()) of conversion/base.py's text.
        use sha2::Digest;
        assert_eq!(CHKTXT.chars().count(), 350);
        assert_eq!(
            hex(&sha2::Sha256::digest(CHKTXT.as_bytes())),
            "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da"
        );
    }
}
