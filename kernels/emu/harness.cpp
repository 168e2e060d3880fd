// Runs kernels/*.cu on the CPU under the emulator (cuda_emu.h) for tests/kernel_emu.rs.
//
//   harness COMMANDS
//
// COMMANDS is a text file, one command per line:
//   buf NAME BYTES PATH       a device buffer of BYTES bytes, read from PATH (- for zeros);
//                             it ends at a guard page, so a read or write past it faults
//   launch KERNEL GX GY GZ BX BY BZ SMEM ARG...
//                             launches KERNEL on a GX x GY x GZ grid of BX x BY x BZ blocks
//                             with SMEM bytes of dynamic shared memory. ARG is @NAME (a
//                             buffer), null, i32:N, i64:N, u64:N or f32:X, and must match the
//                             type of the kernel's parameter in its place
//   save NAME PATH            writes the buffer to PATH
// Errors go to stderr with a non-zero exit code.
#include "cuda_emu.h"

#include "../adamw.cu"
#include "../attention.cu"
#include "../cross_entropy.cu"
#include "../dropout.cu"
#include "../glu.cu"
#include "../nf4.cu"
#include "../rms_norm.cu"
#include "../rope.cu"

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace {

[[noreturn]] void die(const std::string& msg) {
    fprintf(stderr, "kernel emulator: %s\n", msg.c_str());
    exit(2);
}

struct Buffer {
    unsigned char* data = nullptr;
    size_t size = 0;
};

std::map<std::string, Buffer> buffers;

Buffer alloc(size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t rounded = (bytes + 15) / 16 * 16;
    const size_t total = (rounded + page - 1) / page * page + page;
    unsigned char* region = emu::map_region(total);
    if (mprotect(region + total - page, page, PROT_NONE) != 0) die("mprotect failed");
    Buffer b;
    b.data = region + total - page - rounded;
    b.size = bytes;
    return b;
}

enum class Kind { Buf, Null, I32, I64, U64, F32 };

struct Arg {
    Kind kind;
    std::string text;
    void* ptr = nullptr;
    long long i = 0;
    unsigned long long u = 0;
    float f = 0.f;
};

const char* kind_name(Kind k) {
    switch (k) {
        case Kind::Buf: return "a buffer";
        case Kind::Null: return "null";
        case Kind::I32: return "i32";
        case Kind::I64: return "i64";
        case Kind::U64: return "u64";
        case Kind::F32: return "f32";
    }
    return "?";
}

template <typename P>
P conv(const char* kernel, const Arg& a, size_t i) {
    auto want = [&](Kind k) {
        if (a.kind != k)
            die(std::string(kernel) + ": argument " + std::to_string(i) + " (`" + a.text + "`) is " +
                kind_name(a.kind) + " but the kernel takes " + kind_name(k));
    };
    if constexpr (std::is_pointer_v<P>) {
        if (a.kind == Kind::Null) return nullptr;
        want(Kind::Buf);
        return reinterpret_cast<P>(a.ptr);
    } else if constexpr (std::is_same_v<P, int>) {
        want(Kind::I32);
        return (int)a.i;
    } else if constexpr (std::is_same_v<P, long long>) {
        want(Kind::I64);
        return a.i;
    } else if constexpr (std::is_same_v<P, size_t>) {
        want(Kind::U64);
        return (size_t)a.u;
    } else if constexpr (std::is_same_v<P, float>) {
        want(Kind::F32);
        return a.f;
    } else {
        static_assert(!sizeof(P*), "a kernel parameter type the harness does not know");
    }
}

template <typename... P, size_t... I>
void call(const char* name, void (*fn)(P...), const std::vector<Arg>& args, dim3 grid, dim3 block, size_t smem,
          std::index_sequence<I...>) {
    if (args.size() != sizeof...(P))
        die(std::string(name) + " takes " + std::to_string(sizeof...(P)) + " arguments, got " +
            std::to_string(args.size()));
    std::tuple<P...> t{conv<P>(name, args[I], I)...};
    emu::launch(name, grid, block, smem, [&] { std::apply(fn, t); });
}

template <typename... P>
void call(const char* name, void (*fn)(P...), const std::vector<Arg>& args, dim3 grid, dim3 block, size_t smem) {
    call(name, fn, args, grid, block, smem, std::index_sequence_for<P...>{});
}

using Launcher = void (*)(const std::vector<Arg>&, dim3, dim3, size_t);

#define REG(name) {#name, [](const std::vector<Arg>& a, dim3 g, dim3 b, size_t s) { call(#name, name, a, g, b, s); }},
#define REG3(base) REG(base##_f32) REG(base##_bf16) REG(base##_f16)
#define REG_FLASH(S) \
    REG(flash_fwd_64_##S) REG(flash_fwd_128_##S) REG(flash_fwd_256_##S) REG(flash_bwd_64_##S) \
    REG(flash_bwd_128_##S) REG(flash_bwd_256_##S) REG(flash_bwd_delta_##S)

const std::map<std::string, Launcher> kernels = {
    REG3(rms_norm_fwd) REG3(rms_norm_bwd) REG3(rope) REG3(glu_fwd) REG3(glu_bwd) REG3(ce_block_fwd)
    REG3(ce_block_bwd) REG3(nf4_dequant) REG(adamw_f32) REG3(dropout) REG_FLASH(bf16) REG_FLASH(f16)
};

Arg parse_arg(const std::string& s) {
    Arg a;
    a.text = s;
    auto num = [&](size_t at) { return s.substr(at); };
    try {
        if (s == "null") {
            a.kind = Kind::Null;
        } else if (s.rfind("@", 0) == 0) {
            auto it = buffers.find(s.substr(1));
            if (it == buffers.end()) die("no buffer named `" + s.substr(1) + "`");
            a.kind = Kind::Buf;
            a.ptr = it->second.data;
        } else if (s.rfind("i32:", 0) == 0) {
            a.kind = Kind::I32;
            a.i = std::stoll(num(4));
            if (a.i < INT32_MIN || a.i > INT32_MAX) die("`" + s + "` does not fit in 32 bits");
        } else if (s.rfind("i64:", 0) == 0) {
            a.kind = Kind::I64;
            a.i = std::stoll(num(4));
        } else if (s.rfind("u64:", 0) == 0) {
            a.kind = Kind::U64;
            a.u = std::stoull(num(4));
        } else if (s.rfind("f32:", 0) == 0) {
            a.kind = Kind::F32;
            a.f = std::strtof(num(4).c_str(), nullptr);
        } else {
            die("cannot read argument `" + s + "`");
        }
    } catch (const std::exception&) {
        die("cannot read the number in `" + s + "`");
    }
    return a;
}

void on_segv(int, siginfo_t* info, void*) {
    char msg[256];
    const int n = snprintf(msg, sizeof msg,
                           "kernel emulator: %s: segmentation fault at %p (an access past the end of a buffer?)\n",
                           emu::S.kernel, info->si_addr);
    if (n > 0) {
        const ssize_t w = write(2, msg, (size_t)n);
        (void)w;
    }
    _exit(71);
}

void install_segv_handler() {
    static std::vector<char> alt(1 << 16);
    stack_t ss{};
    ss.ss_sp = alt.data();
    ss.ss_size = alt.size();
    sigaltstack(&ss, nullptr);
    struct sigaction sa{};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) die("usage: harness COMMANDS");
    install_segv_handler();
    std::ifstream in(argv[1]);
    if (!in) die(std::string("cannot read ") + argv[1]);
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
        ++lineno;
        std::istringstream ls(line);
        std::string cmd;
        if (!(ls >> cmd) || cmd[0] == '#') continue;
        const std::string where = std::string(argv[1]) + ":" + std::to_string(lineno) + ": ";
        if (cmd == "buf") {
            std::string name, path;
            size_t bytes = 0;
            if (!(ls >> name >> bytes >> path)) die(where + "expected: buf NAME BYTES PATH");
            Buffer b = alloc(bytes);
            if (path != "-") {
                std::ifstream f(path, std::ios::binary);
                if (!f) die(where + "cannot read " + path);
                f.read(reinterpret_cast<char*>(b.data), (std::streamsize)bytes);
                if ((size_t)f.gcount() != bytes || f.peek() != EOF)
                    die(where + path + " does not hold exactly " + std::to_string(bytes) + " bytes");
            }
            buffers[name] = b;
        } else if (cmd == "launch") {
            std::string name;
            dim3 grid, block;
            size_t smem = 0;
            if (!(ls >> name >> grid.x >> grid.y >> grid.z >> block.x >> block.y >> block.z >> smem))
                die(where + "expected: launch KERNEL GX GY GZ BX BY BZ SMEM ARG...");
            auto it = kernels.find(name);
            if (it == kernels.end()) die(where + "no kernel named `" + name + "`");
            std::vector<Arg> args;
            std::string a;
            while (ls >> a) args.push_back(parse_arg(a));
            it->second(args, grid, block, smem);
        } else if (cmd == "save") {
            std::string name, path;
            if (!(ls >> name >> path)) die(where + "expected: save NAME PATH");
            auto it = buffers.find(name);
            if (it == buffers.end()) die(where + "no buffer named `" + name + "`");
            std::ofstream f(path, std::ios::binary);
            f.write(reinterpret_cast<const char*>(it->second.data), (std::streamsize)it->second.size);
            if (!f) die(where + "cannot write " + path);
        } else {
            die(where + "unknown command `" + cmd + "`");
        }
    }
    return 0;
}
