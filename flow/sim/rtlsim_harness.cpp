// sibnn rtlsim harness: drives one Verilated FINN RTL node through its AXI streams.
//
// flow/sim/rtlsim.py fills in the markers: the stream counts, each stream's width in 32-bit
// words, and the glue functions between the loop below and the node's ports (unused inputs,
// e.g. an AXI-lite slave or an unused set-selection stream, are held at 0). The model class is
// always Vtop (verilator --prefix Vtop); this file is compiled in one unit with the generated
// model, so it sticks to headers verilated.h already pulls in, plus stdio.
//
// Usage: sim name=<node> max_cycles=<n> in0=<file> ... out0=<file> count0=<beats> ...
// Input files hold one beat per line in hex (most significant digit first); output files are
// written the same way. TVALID is high whenever a beat is pending, TREADY is always high after
// reset. Exit 0 with "cycles <n>" on stdout (clock cycles after reset until the last expected
// output beat); exit 3 with a message naming the node when the watchdog fires; 2 on bad usage.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "Vtop.h"
#include "verilated.h"

namespace sibnn {

typedef std::vector<uint32_t> Words;

template <typename T>
void put(T& sig, const uint32_t* w, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < 2 && i < n; ++i) v |= static_cast<uint64_t>(w[i]) << (32 * i);
    sig = static_cast<T>(v);
}

template <std::size_t N>
void put(VlWide<N>& sig, const uint32_t* w, size_t n) {
    for (size_t i = 0; i < N; ++i) sig.at(i) = i < n ? w[i] : 0;
}

template <typename T>
void get(const T& sig, uint32_t* w, size_t n) {
    const uint64_t v = static_cast<uint64_t>(sig);
    for (size_t i = 0; i < n; ++i) w[i] = i < 2 ? static_cast<uint32_t>(v >> (32 * i)) : 0;
}

template <std::size_t N>
void get(const VlWide<N>& sig, uint32_t* w, size_t n) {
    for (size_t i = 0; i < n; ++i) w[i] = i < N ? sig.at(i) : 0;
}

const uint32_t kZero[2] = {0, 0};

// ---- generated glue --------------------------------------------------------------------
const int kIns = /*@N_IN@*/;
const int kOuts = /*@N_OUT@*/;
const size_t kInWords[] = {/*@IN_WORDS@*/ 0};
const size_t kOutWords[] = {/*@OUT_WORDS@*/ 0};
const char* const kInNames[] = {/*@IN_NAMES@*/ ""};
const char* const kOutNames[] = {/*@OUT_NAMES@*/ ""};

void hold_idle(Vtop* top) {
    (void)top;
    /*@IDLE@*/
}

void drive_in(Vtop* top, int k, const uint32_t* w, bool valid) {
    switch (k) {
        /*@DRIVE_IN@*/
        default: break;
    }
}

bool in_ready(Vtop* top, int k) {
    switch (k) {
        /*@IN_READY@*/
        default: return false;
    }
}

void set_out_ready(Vtop* top, int k, bool ready) {
    switch (k) {
        /*@OUT_READY@*/
        default: break;
    }
}

bool out_valid(Vtop* top, int k) {
    switch (k) {
        /*@OUT_VALID@*/
        default: return false;
    }
}

void out_data(Vtop* top, int k, uint32_t* w) {
    switch (k) {
        /*@OUT_DATA@*/
        default: break;
    }
}
// ---- end of generated glue -------------------------------------------------------------

[[noreturn]] void fail(int code, const std::string& msg) {
    std::fprintf(stderr, "%s\n", msg.c_str());
    std::exit(code);
}

int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Reads one beat per line into `out` (stride `words`); returns the number of beats.
size_t read_beats(const std::string& path, size_t words, Words& out) {
    FILE* f = std::fopen(path.c_str(), "r");
    if (!f) fail(2, "rtlsim harness: cannot read " + path);
    std::string line;
    size_t beats = 0;
    int c;
    do {
        c = std::fgetc(f);
        if (c != EOF && c != '\n') {
            if (c != '\r' && c != ' ') line.push_back(static_cast<char>(c));
            continue;
        }
        if (line.empty()) continue;
        out.resize((beats + 1) * words, 0);
        uint32_t* w = &out[beats * words];
        size_t nib = 0;
        for (size_t k = line.size(); k-- > 0; ++nib) {
            const int v = hexval(line[k]);
            if (v < 0) fail(2, "rtlsim harness: bad hex in " + path + ": " + line);
            if (v == 0) continue;
            if (nib / 8 >= words) fail(2, "rtlsim harness: beat wider than its port in " + path);
            w[nib / 8] |= static_cast<uint32_t>(v) << (4 * (nib % 8));
        }
        ++beats;
        line.clear();
    } while (c != EOF);
    std::fclose(f);
    return beats;
}

void write_beats(const std::string& path, size_t words, const Words& beats, size_t n) {
    FILE* f = std::fopen(path.c_str(), "w");
    if (!f) fail(2, "rtlsim harness: cannot write " + path);
    for (size_t b = 0; b < n; ++b) {
        const uint32_t* w = &beats[b * words];
        size_t top = words;
        while (top > 1 && w[top - 1] == 0) --top;
        std::fprintf(f, "%x", w[top - 1]);
        for (size_t i = top - 1; i-- > 0;) std::fprintf(f, "%08x", w[i]);
        std::fputc('\n', f);
    }
    if (std::fclose(f) != 0) fail(2, "rtlsim harness: cannot write " + path);
}

struct In {
    Words beats;
    size_t n = 0;
    size_t pos = 0;
};

struct Out {
    Words beats;
    size_t n = 0;
    size_t expected = 0;
};

void tick(Vtop* top, VerilatedContext* ctx) {
    top->ap_clk = 1;
    top->eval();
    ctx->timeInc(1);
    top->ap_clk = 0;
    top->eval();
    ctx->timeInc(1);
}

int run(int argc, char** argv) {
    std::map<std::string, std::string> args;
    for (int i = 1; i < argc; ++i) {
        const char* eq = std::strchr(argv[i], '=');
        if (!eq) fail(2, std::string("rtlsim harness: bad argument ") + argv[i]);
        args[std::string(argv[i], static_cast<size_t>(eq - argv[i]))] = std::string(eq + 1);
    }
    const std::string node = args.count("name") ? args["name"] : "?";
    const uint64_t max_cycles =
        args.count("max_cycles") ? std::strtoull(args["max_cycles"].c_str(), nullptr, 10) : 0;

    std::vector<In> ins(kIns);
    std::vector<Out> outs(kOuts);
    for (int k = 0; k < kIns; ++k) {
        const std::string key = "in" + std::to_string(k);
        if (!args.count(key)) fail(2, "rtlsim harness: missing " + key + "=<file>");
        ins[k].n = read_beats(args[key], kInWords[k], ins[k].beats);
    }
    for (int k = 0; k < kOuts; ++k) {
        const std::string key = "count" + std::to_string(k);
        if (!args.count(key) || !args.count("out" + std::to_string(k)))
            fail(2, "rtlsim harness: missing out" + std::to_string(k) + "= or " + key + "=");
        outs[k].expected = std::strtoull(args[key].c_str(), nullptr, 10);
        outs[k].beats.assign(outs[k].expected * kOutWords[k], 0);
    }

    VerilatedContext ctx;
    ctx.randReset(0);
    Vtop top(&ctx, "top");

    // reset: ap_rst_n low for 8 cycles, nothing valid, outputs not ready
    hold_idle(&top);
    for (int k = 0; k < kIns; ++k) drive_in(&top, k, kZero, false);
    for (int k = 0; k < kOuts; ++k) set_out_ready(&top, k, false);
    top.ap_rst_n = 0;
    top.ap_clk = 0;
    top.eval();
    for (int c = 0; c < 8; ++c) tick(&top, &ctx);
    top.ap_rst_n = 1;
    top.eval();

    uint64_t cycles = 0;
    std::vector<char> fired(kIns);
    for (;;) {
        bool done = true;
        for (const Out& o : outs) done = done && o.n >= o.expected;
        if (done) break;
        if (cycles >= max_cycles) {
            std::string msg = "rtlsim watchdog: node " + node + " stalled after " +
                              std::to_string(cycles) + " cycles (limit " +
                              std::to_string(max_cycles) + "):";
            for (int k = 0; k < kIns; ++k)
                msg += std::string(" ") + kInNames[k] + " took " + std::to_string(ins[k].pos) +
                       "/" + std::to_string(ins[k].n) + " beats;";
            for (int k = 0; k < kOuts; ++k)
                msg += std::string(" ") + kOutNames[k] + " gave " + std::to_string(outs[k].n) +
                       "/" + std::to_string(outs[k].expected) + " beats;";
            fail(3, msg);
        }
        // drive this cycle's inputs, let the logic settle, sample the handshakes, clock
        for (int k = 0; k < kIns; ++k) {
            In& s = ins[k];
            const bool pending = s.pos < s.n;
            drive_in(&top, k, pending ? &s.beats[s.pos * kInWords[k]] : kZero, pending);
        }
        for (int k = 0; k < kOuts; ++k) set_out_ready(&top, k, true);
        top.eval();
        for (int k = 0; k < kIns; ++k) fired[k] = ins[k].pos < ins[k].n && in_ready(&top, k);
        for (int k = 0; k < kOuts; ++k) {
            Out& s = outs[k];
            if (s.n < s.expected && out_valid(&top, k))
                out_data(&top, k, &s.beats[(s.n++) * kOutWords[k]]);
        }
        tick(&top, &ctx);
        for (int k = 0; k < kIns; ++k) ins[k].pos += fired[k] ? 1 : 0;
        ++cycles;
    }
    top.final();

    for (int k = 0; k < kOuts; ++k)
        write_beats(args["out" + std::to_string(k)], kOutWords[k], outs[k].beats, outs[k].n);
    std::printf("cycles %llu\n", static_cast<unsigned long long>(cycles));
    for (int k = 0; k < kIns; ++k)
        std::printf("consumed %s %zu %zu\n", kInNames[k], ins[k].pos, ins[k].n);
    return 0;
}

}  // namespace sibnn

int main(int argc, char** argv) { return sibnn::run(argc, argv); }
