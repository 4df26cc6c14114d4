// sibnn stitched simulation: the whole accelerator, cycle by cycle, without Vivado.
//
// flow/sim/stitched.py generates `netlist.inc` (included below): one Verilated model per RTL node
// (FIFOs, data-width converters, thresholds, sliding windows, padding) and one cycle model per
// HLS node (flow/sim/cycle_models.py documents them), joined by AXI-stream channels with
// valid/ready semantics. Every cycle:
//   1. settle: every node drives its outputs (TVALID/TDATA of its output channels, TREADY of its
//      input channels) from its state and its inputs, repeated until no channel changes
//      (combinational paths between RTL modules, e.g. a converter's TREADY, settle here);
//   2. fire: a channel transfers a beat when TVALID && TREADY; every transferred beat is
//      compared with the beat the graph's python execution expects on that channel (exactness
//      of every stream, not only of the output);
//   3. clock: every RTL model sees a rising edge, every HLS model advances one cycle.
// The source feeds `frames` frames back to back; the sink is always ready.
//
// Usage: sim <data-dir> <result.json> [isolate=<node index>] [frames=<n>] [quiet=<cycles>]
//        [period=<cycles per frame the source is paced to>] [max_cycles=<n>]
// Exit: 0 done (result.json written), 3 deadlock or a wrong beat (result.json says which),
// 2 bad usage or data.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <unistd.h>

#include "verilated.h"

namespace ss {

// ---------------------------------------------------------------------------- channels
struct Chan {
    const char* name;     // the tensor's name in the stitched graph
    int words;            // 32-bit words per beat
    int beats;            // beats per frame
    std::vector<uint32_t> data;    // TDATA, `words` words (sized by the netlist)
    bool valid = false;   // TVALID, driven by the producer
    bool ready = false;   // TREADY, driven by the consumer
    bool fire = false;    // valid && ready in this cycle
    std::vector<uint32_t> expect;  // frames x beats x words: what the python execution gives
    uint64_t transfers = 0;        // beats transferred so far
    uint64_t blocked = 0;          // cycles with TVALID and not TREADY (backpressure)
    int64_t first_fire = -1, last_fire = -1;
    const uint32_t* expected(uint64_t k) const { return &expect[k * words]; }
};

template <typename T>
inline bool drive(T& sig, T v) {
    if (sig == v) return false;
    sig = v;
    return true;
}

inline bool set_words(uint32_t* dst, const uint32_t* src, int n) {
    if (std::memcmp(dst, src, n * 4) == 0) return false;
    std::memcpy(dst, src, n * 4);
    return true;
}

bool g_reset = false;  // ap_rst_n low while true

// Verilator port <-> words
template <typename T>
inline void put(T& sig, const uint32_t* w, int n) {
    uint64_t v = w[0];
    if (n > 1) v |= static_cast<uint64_t>(w[1]) << 32;
    sig = static_cast<T>(v);
}
template <std::size_t N>
inline void put(VlWide<N>& sig, const uint32_t* w, int n) {
    for (std::size_t i = 0; i < N; ++i) sig.at(i) = static_cast<int>(i) < n ? w[i] : 0;
}
template <typename T>
inline bool get(const T& sig, uint32_t* w, int n) {
    const uint64_t v = static_cast<uint64_t>(sig);
    uint32_t tmp[2] = {static_cast<uint32_t>(v), static_cast<uint32_t>(v >> 32)};
    return set_words(w, tmp, n < 2 ? n : 2);
}
template <std::size_t N>
inline bool get(const VlWide<N>& sig, uint32_t* w, int n) {
    bool ch = false;
    for (int i = 0; i < n && i < static_cast<int>(N); ++i) ch |= drive(w[i], sig.at(i));
    return ch;
}

// ---------------------------------------------------------------------------- nodes
struct Node {
    const char* name;
    const char* op_type;
    std::vector<Chan*> in, out;
    bool alone = true;  // evaluated (false: not part of an isolated run)
    virtual ~Node() {}
    virtual bool comb() = 0;                 // drive outputs; true if a channel signal changed
    virtual void clock(bool reset) = 0;      // one rising edge
    virtual long fill() const { return -1; } // FIFO occupancy (-1: not a FIFO)
    virtual long max_fill() const { return -1; }
    virtual std::string state() const { return "{}"; }
};

// A cycle model of an HLS node (flow/sim/cycle_models.py): a flushable II=1 pipeline of
// `depth` stages running a per-frame schedule of iterations. Iteration i reads one beat from
// each input in sched[i] & 0xff and, `depth` cycles later, writes one beat to each output in
// (sched[i] >> 8) & 0x7f; bit 15 marks a barrier (the pipeline drains before it issues: a new
// loop or a new invocation of the top function). Each AXI-stream port has a 2-beat register
// slice, as Vitis HLS puts on axis ports. A full output register slice stalls the whole pipeline
// (a blocking write); a missing input only delays the next issue (flp: in-flight iterations
// drain). Output beat values are the node's own outputs from the graph's execution.
struct Hls : Node {
    std::vector<uint16_t> sched;
    int depth = 1;
    int restart = 1;  // idle cycles between two invocations (frames)
    int frames = 0;
    // state
    int frame = 0;
    size_t iter = 0;
    int gap = 0;
    std::vector<int> inbuf;                   // per input: beats in the register slice
    std::vector<int> outbuf;                  // per output: beats buffered in the slice
    std::vector<uint64_t> out_next;           // next beat index to emit per output
    std::vector<uint64_t> written;            // beats written into the output slice
    std::vector<uint16_t> pipe;               // write masks in flight, pipe[0] = oldest
    int in_flight = 0;
    uint64_t issued = 0, stalls = 0, starves = 0;
    bool progressed = false;  // the pipeline moved in the last clock
    bool done() const { return frame >= frames; }

    bool comb() override {
        bool ch = false;
        for (size_t k = 0; k < in.size(); ++k) ch |= drive(in[k]->ready, inbuf[k] < 2);
        for (size_t j = 0; j < out.size(); ++j) {
            Chan* c = out[j];
            const bool v = outbuf[j] > 0;
            ch |= drive(c->valid, v);
            if (v) ch |= set_words(c->data.data(), c->expected(out_next[j]), c->words);
        }
        return ch;
    }
    void clock(bool reset) override {
        progressed = false;
        if (reset) return;
        // register slices take the beats that fired
        for (size_t j = 0; j < out.size(); ++j)
            if (out[j]->fire) { --outbuf[j]; ++out_next[j]; }
        // the core: drain the oldest stage if its writes fit, then issue
        const uint16_t last = pipe[depth - 1];
        bool stall = false;
        for (size_t j = 0; j < out.size(); ++j)
            if ((last >> (8 + j)) & 1 && outbuf[j] >= 2) stall = true;
        if (stall) {
            ++stalls;
        } else {
            progressed = in_flight > 0;
            if (last & 0x8000) --in_flight;
            for (size_t j = 0; j < out.size(); ++j)
                if ((last >> (8 + j)) & 1) { ++outbuf[j]; ++written[j]; }
            for (int s = depth - 1; s > 0; --s) pipe[s] = pipe[s - 1];
            pipe[0] = 0;
            issue();
        }
        for (size_t k = 0; k < in.size(); ++k)
            if (in[k]->fire) ++inbuf[k];
    }
    void issue() {
        if (done()) return;
        if (gap > 0) { --gap; return; }
        const uint16_t s = sched[iter];
        if ((s & 0x4000) && in_flight > 0) return;  // barrier: drain first
        for (size_t k = 0; k < in.size(); ++k)
            if ((s >> k) & 1 && inbuf[k] == 0) { ++starves; return; }
        for (size_t k = 0; k < in.size(); ++k)
            if ((s >> k) & 1) --inbuf[k];
        pipe[0] = static_cast<uint16_t>((s & 0x3f00) | 0x8000);
        ++in_flight;
        ++issued;
        progressed = true;
        if (++iter == sched.size()) { iter = 0; ++frame; gap = restart; }
    }
    std::string state() const override {
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "{\"frame\": %d, \"iteration\": %zu, \"in_flight\": %d, \"issued\": %llu, "
                      "\"stall_cycles\": %llu, \"starve_cycles\": %llu}",
                      frame, iter, in_flight, (unsigned long long)issued,
                      (unsigned long long)stalls, (unsigned long long)starves);
        return buf;
    }
};

// ---------------------------------------------------------------------------- the design
struct Design {
    std::vector<Chan*> chans;
    std::vector<Node*> nodes;
    Chan* input = nullptr;
    Chan* output = nullptr;
};

void build(Design& d, VerilatedContext* ctx, const std::string& data);  // netlist.inc

[[noreturn]] void fail(int code, const std::string& msg) {
    std::fprintf(stderr, "stitched sim: %s\n", msg.c_str());
    std::exit(code);
}

// Run f with the working directory set to dir: a model's $readmemh paths are relative.
template <typename F>
void in_dir(const char* dir, F f) {
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) fail(2, "getcwd failed");
    if (chdir(dir) != 0) fail(2, std::string("cannot enter ") + dir);
    f();
    if (chdir(cwd) != 0) fail(2, "cannot return to the working directory");
}

std::vector<uint16_t> load_sched(const std::string& dir, const char* node, size_t n) {
    const std::string path = dir + "/" + node + ".sched";
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) fail(2, "cannot read " + path);
    std::vector<uint16_t> s(n);
    if (std::fread(s.data(), 2, n, f) != n) fail(2, "short file " + path);
    std::fclose(f);
    return s;
}

void load_expect(const std::string& dir, Chan* c, int frames) {
    const std::string path = dir + "/" + c->name + ".bin";
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) fail(2, "cannot read " + path);
    const size_t n = static_cast<size_t>(frames) * c->beats * c->words;
    c->expect.resize(n);
    if (std::fread(c->expect.data(), 4, n, f) != n) fail(2, "short file " + path);
    std::fclose(f);
}

std::string jstr(const char* s) { return std::string("\"") + s + "\""; }

}  // namespace ss

#include "netlist.inc"

using namespace ss;

int main(int argc, char** argv) {
    if (argc < 3) fail(2, "usage: sim <data-dir> <result.json> [isolate=N] [frames=N] [quiet=N]");
    const std::string dir = argv[1], result = argv[2];
    long isolate = -1, frames = 1, quiet_limit = 4096, max_cycles = 0, period = 0;
    for (int i = 3; i < argc; ++i) {
        std::string a = argv[i];
        const size_t eq = a.find('=');
        const std::string k = a.substr(0, eq);
        const long v = std::atol(a.substr(eq + 1).c_str());
        if (k == "isolate") isolate = v;
        else if (k == "frames") frames = v;
        else if (k == "quiet") quiet_limit = v;
        else if (k == "max_cycles") max_cycles = v;
        else if (k == "period") period = v;  // source paced: one frame per `period` cycles
        else fail(2, "unknown argument " + a);
    }
    VerilatedContext ctx;
    Design d;
    build(d, &ctx, dir);
    std::vector<Chan*> sources, sinks;
    std::vector<Node*> active;
    if (isolate >= 0) {  // one node alone: its inputs from sources, its outputs into sinks
        if (isolate >= static_cast<long>(d.nodes.size())) fail(2, "isolate: no such node");
        Node* n = d.nodes[isolate];
        active.push_back(n);
        sources = n->in;
        sinks = n->out;
    } else {
        active = d.nodes;
        sources.push_back(d.input);
        sinks.push_back(d.output);
    }
    for (Chan* c : d.chans) load_expect(dir, c, static_cast<int>(frames));
    for (Node* n : d.nodes)
        if (Hls* h = dynamic_cast<Hls*>(n)) h->frames = static_cast<int>(frames);
    // reset: 16 cycles with ap_rst_n low
    g_reset = true;
    for (int r = 0; r < 16; ++r) {
        for (Node* n : active) n->comb();
        for (Node* n : active) n->clock(true);
    }
    g_reset = false;
    std::vector<uint64_t> src_pos(sources.size(), 0);
    std::vector<std::vector<int64_t>> sink_done(sinks.size());
    const uint64_t total_out = static_cast<uint64_t>(frames);
    int64_t cycle = 0, quiet = 0, last_move = 0;
    std::string error;
    std::string error_kind;
    const uint64_t limit = max_cycles > 0 ? max_cycles : ~0ULL;
    for (;;) {
        // sources drive their channels
        for (size_t s = 0; s < sources.size(); ++s) {
            Chan* c = sources[s];
            bool v = src_pos[s] < static_cast<uint64_t>(frames) * c->beats;
            if (period > 0)  // beat i no earlier than cycle i * period / beats
                v = v && static_cast<uint64_t>(cycle) * c->beats >= src_pos[s] * period;
            c->valid = v;
            if (v) std::memcpy(c->data.data(), c->expected(src_pos[s]), c->words * 4);
        }
        for (Chan* c : sinks) c->ready = true;
        // settle
        int pass = 0;
        for (bool ch = true; ch; ++pass) {
            if (pass > 64) fail(2, "combinational loop: channels do not settle");
            ch = false;
            for (Node* n : active) ch |= n->comb();
            for (auto it = active.rbegin(); it != active.rend(); ++it) ch |= (*it)->comb();
        }
        // fire
        bool moved = false;
        for (Chan* c : d.chans) {
            c->fire = c->valid && c->ready;
            if (c->valid && !c->ready) ++c->blocked;
            if (!c->fire) continue;
            moved = true;
            if (c->transfers >= static_cast<uint64_t>(frames) * c->beats) {
                // a node that needs no input for part of a frame (padding) runs ahead into
                // the next frame: beyond the simulated frames nothing is checked
                ++c->transfers;
                continue;
            }
            if (std::memcmp(c->data.data(), c->expected(c->transfers), c->words * 4) != 0) {
                error_kind = "mismatch";
                error = std::string("channel ") + c->name + ": frame " +
                        std::to_string(c->transfers / c->beats) + ", beat " +
                        std::to_string(c->transfers % c->beats) +
                        " differs from the graph's execution";
                break;
            }
            if (c->first_fire < 0) c->first_fire = cycle;
            c->last_fire = cycle;
            ++c->transfers;
        }
        if (!error.empty()) break;
        for (size_t s = 0; s < sources.size(); ++s)
            if (sources[s]->fire) ++src_pos[s];
        bool all_done = true;
        for (size_t s = 0; s < sinks.size(); ++s) {
            Chan* c = sinks[s];
            if (c->fire && c->transfers % c->beats == 0 && sink_done[s].size() < total_out)
                sink_done[s].push_back(cycle);
            if (sink_done[s].size() < total_out) all_done = false;
        }
        for (Node* n : active) n->clock(false);
        for (Node* n : active) {
            Hls* h = dynamic_cast<Hls*>(n);
            if (h && h->progressed) moved = true;
        }
        ++cycle;
        if (moved) { quiet = 0; last_move = cycle; } else ++quiet;
        if (all_done) break;
        if (quiet >= quiet_limit) {
            error_kind = "deadlock";
            error = "no beat moved for " + std::to_string(quiet) + " cycles";
            break;
        }
        if (static_cast<uint64_t>(cycle) >= limit) {
            error_kind = "limit";
            error = "cycle limit reached";
            break;
        }
    }
    // result
    FILE* f = std::fopen(result.c_str(), "w");
    if (!f) fail(2, "cannot write " + result);
    std::fprintf(f, "{\"cycles\": %lld, \"last_move\": %lld, \"frames\": %ld, \"error_kind\": %s,"
                 " \"error\": %s,\n", (long long)cycle, (long long)last_move, frames,
                 jstr(error_kind.c_str()).c_str(), jstr(error.c_str()).c_str());
    std::fprintf(f, "\"sink_frame_done\": [");
    for (size_t s = 0; s < sinks.size(); ++s) {
        std::fprintf(f, "%s[", s ? ", " : "");
        for (size_t i = 0; i < sink_done[s].size(); ++i)
            std::fprintf(f, "%s%lld", i ? ", " : "", (long long)sink_done[s][i]);
        std::fprintf(f, "]");
    }
    std::fprintf(f, "],\n\"channels\": {");
    for (size_t i = 0; i < d.chans.size(); ++i) {
        Chan* c = d.chans[i];
        std::fprintf(f, "%s\n %s: {\"transfers\": %llu, \"first\": %lld, \"last\": %lld, "
                     "\"blocked\": %llu, \"valid\": %d, \"ready\": %d}", i ? "," : "",
                     jstr(c->name).c_str(), (unsigned long long)c->transfers,
                     (long long)c->first_fire, (long long)c->last_fire,
                     (unsigned long long)c->blocked, c->valid ? 1 : 0, c->ready ? 1 : 0);
    }
    std::fprintf(f, "},\n\"nodes\": {");
    bool first = true;
    for (Node* n : active) {
        std::fprintf(f, "%s\n %s: {\"fill\": %ld, \"max_fill\": %ld, \"state\": %s}",
                     first ? "" : ",", jstr(n->name).c_str(), n->fill(), n->max_fill(),
                     n->state().c_str());
        first = false;
    }
    std::fprintf(f, "}}\n");
    std::fclose(f);
    for (Node* n : d.nodes) delete n;
    for (Chan* c : d.chans) delete c;
    return error.empty() ? 0 : 3;
}
