//! wgpu against the CPU: three training steps of a tiny BERT (dropout off, the same initial
//! weights, the same batch) must give the same loss within float tolerance. Runs when the binary
//! has the `wgpu` feature (`cargo test --features wgpu`); without a GPU, Mesa's software Vulkan
//! (Debian: `apt-get install mesa-vulkan-drivers`) is enough. Skips, saying so, where no adapter
//! exists, except under CI (`CI=true`), where that fails.
#![cfg(feature = "wgpu")]

mod common;
use common::*;

fn final_loss(backend: &str) -> Result<(f64, f64), String> {
    let json = bench_train_tiny(&[
        "--set",
        "optimizer.learning_rate=1e-3",
        "--steps",
        "3",
        "--warmup",
        "0",
        "--backend",
        backend,
    ])?;
    Ok((
        json["first_loss"].as_f64().ok_or("first_loss")?,
        json["final_loss"].as_f64().ok_or("final_loss")?,
    ))
}

#[test]
fn wgpu_training_steps_match_the_cpu() {
    let cpu = final_loss("cpu").expect("cpu run");
    let gpu = match final_loss("wgpu") {
        Ok(l) => l,
        Err(e) if e.contains("no wgpu adapter") => {
            // CI installs Mesa's software Vulkan: there, no adapter is a failure, not a skip.
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and no wgpu adapter ({e}): install mesa-vulkan-drivers"
            );
            eprintln!(
                "SKIPPED: no wgpu adapter on this machine ({e}); install mesa-vulkan-drivers"
            );
            return;
        }
        Err(e) => panic!("wgpu run failed: {e}"),
    };
    eprintln!("cpu losses {cpu:?}, wgpu losses {gpu:?}");
    assert!(
        (cpu.0 - gpu.0).abs() < 1e-4,
        "first step: cpu {cpu:?} wgpu {gpu:?}"
    );
    assert!(
        (cpu.1 - gpu.1).abs() < 1e-3,
        "third step: cpu {cpu:?} wgpu {gpu:?}"
    );
    assert!(cpu.1 < cpu.0, "the loss falls: {cpu:?}");
}
