# attnscope build. `make` builds build/attnscope (CPU backend always; CUDA backend where nvcc
# exists). `make test` runs the CPU tests, `make test-gpu` the GPU tests, `make asan` the tests
# under AddressSanitizer + UBSan, `make run` the explorer on the shipped sample, `make bench`.
# Missing Debian packages are installed by `make deps` (tools/deps.sh), which the others call.

CC       ?= cc
BUILD    ?= build
WERROR   ?= 1
ARCHFLAG ?= $(if $(filter x86_64,$(shell uname -m)),-march=x86-64-v3,)
OPT      ?= -O3 $(ARCHFLAG)
CFLAGS_BASE = -std=c11 -g $(OPT) -Wall -Wextra $(if $(filter 1,$(WERROR)),-Werror,) \
              -D_GNU_SOURCE -pthread -Iengine -Iviz -Iapp -Ikernels -I/usr/include/x86_64-linux-gnu/openblas-pthread
CFLAGS   += $(CFLAGS_BASE) $(EXTRA_CFLAGS)
LDLIBS   = -lcjson -lpng -lncursesw -lopenblas -lpthread -lm
SAN      ?=

# CUDA: CUDA=0 disables it; CUDA_ARCH picks the target (sm_90 = H100/H200).
CUDA      ?= 1
CUDA_ARCH ?= sm_90
NVCC      ?= $(shell command -v nvcc 2>/dev/null || (test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc))
ifeq ($(CUDA),1)
ifneq ($(NVCC),)
HAVE_CUDA := 1
endif
endif
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
NVCCFLAGS ?= -O3 -arch=$(CUDA_ARCH) -lineinfo -std=c++17 -Iengine -Ikernels -Xcompiler -Wall
# The wgmma kernels (kernels/krn_hattn.cu) need the architecture-specific sm_90a target; for other
# CUDA_ARCH values they compile empty and the mma.sync kernels run instead.
HATTN_90A   := -gencode=arch=compute_90a,code=sm_90a -DKRN_HOPPER=1
HATTN_FLAGS := $(if $(filter sm_90,$(CUDA_ARCH)),$(HATTN_90A),-arch=$(CUDA_ARCH))

ENGINE_SRC := $(wildcard engine/*.c)
VIZ_SRC    := $(wildcard viz/*.c)
APP_SRC    := $(filter-out app/main.c,$(wildcard app/*.c))
KERN_SRC   := $(wildcard kernels/*.cu)
LIB_OBJ    := $(patsubst %.c,$(BUILD)/obj/%.o,$(ENGINE_SRC) $(VIZ_SRC) $(APP_SRC))
ifdef HAVE_CUDA
CFLAGS   += -DATTNSCOPE_CUDA -I$(CUDA_HOME)/include
LIB_OBJ  += $(patsubst %.cu,$(BUILD)/obj/%.o,$(KERN_SRC))
LDLIBS   += -L$(CUDA_HOME)/lib64 -lcublas -lcudart_static -ldl -lrt -lstdc++ -Wl,-rpath,$(CUDA_HOME)/lib64 -Wl,-rpath,'$$ORIGIN'
BACKENDS := cpu cuda($(CUDA_ARCH))
else
BACKENDS := cpu
endif

TEST_SRC  := $(wildcard tests/test_*.c)
TEST_BIN  := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
GPU_SRC   := $(wildcard tests/gpu_*.c)
GPU_BIN   := $(if $(HAVE_CUDA),$(patsubst tests/%.c,$(BUILD)/tests/%,$(GPU_SRC)),)
FUZZ_SRC  := $(wildcard tests/fuzz/fuzz_*.c)

.PHONY: all deps test test-gpu test-gpu-local asan run bench fuzz clean backends format
all: deps $(BUILD)/attnscope backends

backends:
	@echo "attnscope: built backends: $(BACKENDS)"

deps:
	@tools/deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SAN) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/kernels/krn_hattn.o: kernels/krn_hattn.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(filter-out -arch=%,$(NVCCFLAGS)) $(HATTN_FLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libattnscope.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/attnscope: $(BUILD)/obj/app/main.o $(BUILD)/libattnscope.a
	$(CC) $(CFLAGS) $(SAN) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(BUILD)/libattnscope.a tests/test_util.h tests/gpu_util.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SAN) -Itests $< $(BUILD)/libattnscope.a -o $@ $(LDLIBS) -lcmocka

test: deps $(BUILD)/attnscope $(TEST_BIN) backends
	@tests/run.sh $(BUILD) $(TEST_BIN)

# On a machine without the -dev packages and without network (the lent GPU machine), the build uses
# the Debian packages carried in .carry/debs (tools/gpu_build.sh prepare, run where apt works).
test-gpu:
	@if ! tools/deps.sh --check 2>/dev/null && [ -d .carry/debs ]; then tools/gpu_build.sh test-gpu; \
	 else $(MAKE) --no-print-directory test-gpu-local; fi

test-gpu-local: deps $(BUILD)/attnscope $(GPU_BIN)
	@tests/run_gpu.sh $(BUILD) $(GPU_BIN)

asan:
	$(MAKE) BUILD=build-asan CUDA=0 OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" test

run: all
	@tools/run_sample.sh $(BUILD)/attnscope

bench: all
	@bench/run.sh $(BUILD)/attnscope

fuzz:
	@tools/fuzz.sh $(FUZZ_SRC)

clean:
	rm -rf build build-asan build-fuzz

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
