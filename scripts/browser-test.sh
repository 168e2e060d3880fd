#!/usr/bin/env bash
# The dashboard's browser test: headless Chromium driven through chromedriver (WebDriver)
# creates a job through the form, watches it train, and saves a screenshot of each page
# (into $LORA_TRAIN_SCREENSHOTS, else target/tmp/screenshots). Skips, saying so, when
# Chromium is not installed (scripts/install-chromium.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "browser test SKIPPED: chromium and chromedriver are not installed (scripts/install-chromium.sh)"
  exit 0
fi
echo "browser test: $(chromium --version 2>/dev/null | head -1)"
cargo test --locked --test it -- --ignored --exact \
  dashboard::a_browser_creates_a_job_and_watches_it_train
