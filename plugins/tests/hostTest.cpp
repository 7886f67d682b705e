// Host-only test of the plugin library: dlopen it, get the creators, and exercise every plugin method but
// enqueue (no GPU, no libnvinfer). Usage: tost_plugin_host_test path/to/libtost_edge_plugins.so
#include "NvInferRuntime.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
int gPassed = 0;
int gFailed = 0;

void check(bool ok, std::string const& what)
{
    if (ok)
    {
        ++gPassed;
    }
    else
    {
        ++gFailed;
        std::printf("FAILED: %s\n", what.c_str());
    }
}

// A minimal IExprBuilder: constants and arithmetic on constants, enough for getOutputShapes.
class FakeDimImpl : public apiv::VDimensionExpr
{
public:
    FakeDimImpl(int64_t v, bool c) : mV(v), mC(c) {}
    bool isConstant() const override { return mC; }
    int64_t getConstantValue() const override { return mV; }
    bool isSizeTensor() const override { return false; }

private:
    int64_t mV;
    bool mC;
};

class FakeDim : public IDimensionExpr
{
public:
    FakeDim(int64_t v, bool c) : mFake(v, c) { mImpl = &mFake; }
    ~FakeDim() noexcept override = default;

private:
    FakeDimImpl mFake;
};

class FakeBuilderImpl : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override { return make(value, true); }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override
    {
        if (!a.isConstant() || !b.isConstant())
        {
            return make(-1, false);
        }
        int64_t x = a.getConstantValue(), y = b.getConstantValue();
        switch (op)
        {
        case DimensionOperation::kSUM: return make(x + y, true);
        case DimensionOperation::kPROD: return make(x * y, true);
        case DimensionOperation::kFLOOR_DIV: return make(x / y, true);
        default: return make(-1, false);
        }
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
    IDimensionExpr const* make(int64_t v, bool c)
    {
        mDims.emplace_back(new FakeDim(v, c));
        return mDims.back().get();
    }

private:
    std::vector<std::unique_ptr<FakeDim>> mDims;
};

class FakeBuilder : public IExprBuilder
{
public:
    FakeBuilder() { mImpl = &mFake; }
    ~FakeBuilder() noexcept override = default;
    IDimensionExpr const* dyn() { return mFake.make(-1, false); }

private:
    FakeBuilderImpl mFake;
};

DimsExprs dims(FakeBuilder& eb, std::vector<int64_t> const& v)
{
    DimsExprs d{};
    d.nbDims = static_cast<int32_t>(v.size());
    for (size_t i = 0; i < v.size(); ++i)
    {
        d.d[i] = v[i] < 0 ? eb.dyn() : eb.constant(v[i]);
    }
    return d;
}

DynamicPluginTensorDesc desc(DataType t, TensorFormat f = TensorFormat::kLINEAR)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = t;
    d.desc.format = f;
    return d;
}

struct Spec
{
    char const* name;
    std::vector<PluginField> fields;
    std::vector<std::vector<int64_t>> inShapes;
    std::vector<DataType> inTypes;          // one valid combination
    std::vector<DataType> outTypes;         // expected for it
    std::vector<int> outShapeFrom;          // output i has the shape of input outShapeFrom[i]
    std::vector<PluginField> badFields;     // createPlugin must refuse these
};

IPluginCreatorV3One* findCreator(IPluginCreatorInterface* const* creators, int32_t n, char const* name)
{
    for (int32_t i = 0; i < n; ++i)
    {
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(c->getPluginName(), name) == 0)
        {
            return c;
        }
    }
    return nullptr;
}

std::vector<std::pair<std::string, std::vector<char>>> fieldValues(PluginFieldCollection const* fc)
{
    std::vector<std::pair<std::string, std::vector<char>>> out;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        auto const& f = fc->fields[i];
        size_t sz = f.type == PluginFieldType::kFLOAT32 || f.type == PluginFieldType::kINT32 ? 4 : 1;
        auto const* p = static_cast<char const*>(f.data);
        out.emplace_back(f.name, std::vector<char>(p, p + sz * f.length));
    }
    return out;
}

void testPlugin(IPluginCreatorV3One* creator, Spec const& s)
{
    std::string const n = s.name;
    check(creator != nullptr, n + ": creator registered");
    if (creator == nullptr)
    {
        return;
    }
    check(std::strcmp(creator->getPluginVersion(), "1") == 0, n + ": version 1");
    check(std::strcmp(creator->getPluginNamespace(), "tost_edge") == 0, n + ": namespace tost_edge");
    auto const* names = creator->getFieldNames();
    check(names->nbFields == static_cast<int32_t>(s.fields.size()), n + ": field count");
    for (int32_t i = 0; i < names->nbFields && i < static_cast<int32_t>(s.fields.size()); ++i)
    {
        check(std::strcmp(names->fields[i].name, s.fields[i].name) == 0 && names->fields[i].type == s.fields[i].type,
            n + ": field " + s.fields[i].name);
    }

    PluginFieldCollection fc{static_cast<int32_t>(s.fields.size()), s.fields.data()};
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("layer", &fc, TensorRTPhase::kBUILD));
    check(plugin != nullptr, n + ": createPlugin from fields");
    if (!plugin)
    {
        return;
    }
    PluginFieldCollection empty{0, nullptr};
    check(creator->createPlugin("layer", &empty, TensorRTPhase::kBUILD) == nullptr, n + ": refuses missing fields");
    PluginFieldCollection bad{static_cast<int32_t>(s.badFields.size()), s.badFields.data()};
    check(creator->createPlugin("layer", &bad, TensorRTPhase::kBUILD) == nullptr, n + ": refuses bad field values");

    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core && build && runtime, n + ": capability interfaces");
    if (!(core && build && runtime))
    {
        return;
    }
    check(std::strcmp(core->getPluginName(), s.name) == 0, n + ": core name");
    check(std::strcmp(core->getPluginNamespace(), "tost_edge") == 0, n + ": core namespace");
    int32_t const nbIn = static_cast<int32_t>(s.inTypes.size());
    int32_t const nbOut = build->getNbOutputs();
    check(nbOut == static_cast<int32_t>(s.outTypes.size()), n + ": number of outputs");

    // output types
    std::vector<DataType> outTypes(nbOut);
    check(build->getOutputDataTypes(outTypes.data(), nbOut, s.inTypes.data(), nbIn) == 0, n + ": output types call");
    check(outTypes == s.outTypes, n + ": output types (state pinned to fp32)");

    // formats: the valid combination passes position by position; wrong types and formats are refused
    std::vector<DynamicPluginTensorDesc> io;
    for (auto t : s.inTypes) io.push_back(desc(t));
    for (auto t : s.outTypes) io.push_back(desc(t));
    for (int32_t pos = 0; pos < nbIn + nbOut; ++pos)
    {
        check(build->supportsFormatCombination(pos, io.data(), nbIn, nbOut), n + ": accepts pos " + std::to_string(pos));
        auto saved = io[pos];
        io[pos] = desc(saved.desc.type, TensorFormat::kCHW32);
        check(!build->supportsFormatCombination(pos, io.data(), nbIn, nbOut),
            n + ": refuses non-linear pos " + std::to_string(pos));
        io[pos] = desc(DataType::kINT8);
        check(!build->supportsFormatCombination(pos, io.data(), nbIn, nbOut), n + ": refuses int8 pos " + std::to_string(pos));
        io[pos] = saved;
    }
    for (auto t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        io[0] = desc(t);
        check(build->supportsFormatCombination(0, io.data(), nbIn, nbOut), n + ": activation type accepted");
    }

    // shapes through the fake expression builder
    FakeBuilder eb;
    std::vector<DimsExprs> in;
    for (auto const& sh : s.inShapes) in.push_back(dims(eb, sh));
    std::vector<DimsExprs> out(nbOut);
    check(build->getOutputShapes(in.data(), nbIn, nullptr, 0, out.data(), nbOut, eb) == 0, n + ": output shapes call");
    for (int32_t i = 0; i < nbOut; ++i)
    {
        auto const& want = in[s.outShapeFrom[i]];
        bool same = out[i].nbDims == want.nbDims;
        for (int32_t k = 0; same && k < want.nbDims; ++k)
        {
            same = out[i].d[k] == want.d[k];
        }
        check(same, n + ": output " + std::to_string(i) + " shape");
    }
    auto wrongRank = in;
    wrongRank[0].nbDims -= 1;
    check(build->getOutputShapes(wrongRank.data(), nbIn, nullptr, 0, out.data(), nbOut, eb) != 0, n + ": refuses wrong rank");

    // serialization round trip and clone
    auto const before = fieldValues(runtime->getFieldsToSerialize());
    check(before.size() == s.fields.size(), n + ": serializes every field");
    std::unique_ptr<IPluginV3> restored(
        creator->createPlugin("layer", runtime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
    check(restored != nullptr, n + ": recreated from serialized fields");
    if (restored)
    {
        auto* rt = static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        check(fieldValues(rt->getFieldsToSerialize()) == before, n + ": round trip keeps the fields");
    }
    std::unique_ptr<IPluginV3> cloned(plugin->clone());
    check(cloned != nullptr, n + ": clone");
    if (cloned)
    {
        auto* rt = static_cast<IPluginV3OneRuntime*>(cloned->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        check(fieldValues(rt->getFieldsToSerialize()) == before, n + ": clone keeps the fields");
    }
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::printf("usage: %s libtost_edge_plugins.so\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::printf("dlopen failed: %s\n", dlerror());
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLogger = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    check(getCreators != nullptr, "getCreators exported");
    check(setLogger != nullptr, "setLoggerFinder exported");
    if (getCreators == nullptr)
    {
        std::printf("%d passed, %d failed\n", gPassed, gFailed);
        return 1;
    }
    int32_t n = 0;
    auto* creators = getCreators(n);
    check(n == 3, "three creators");
    for (int32_t i = 0; i < n; ++i)
    {
        check(std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0, "creator interface kind");
    }

    int32_t h4 = 4, h0 = 0, b1 = 1, b2 = 2;
    float eps = 1e-6f, epsBad = -1.f;
    testPlugin(findCreator(creators, n, "TSSA_TRT"),
        Spec{"TSSA_TRT", {PluginField("num_heads", &h4, PluginFieldType::kINT32, 1)}, {{-1, -1, 256}, {4}},
            {DataType::kHALF, DataType::kFLOAT}, {DataType::kHALF}, {0},
            {PluginField("num_heads", &h0, PluginFieldType::kINT32, 1)}});
    testPlugin(findCreator(creators, n, "CausalTSSA_TRT"),
        Spec{"CausalTSSA_TRT",
            {PluginField("num_heads", &h4, PluginFieldType::kINT32, 1), PluginField("bounded", &b1, PluginFieldType::kINT32, 1)},
            {{-1, -1, 256}, {4}, {4, 1024}, {-1}, {-1, 4, 64}, {-1, 4, 64}, {-1, 4}},
            {DataType::kHALF, DataType::kFLOAT, DataType::kFLOAT, DataType::kINT32, DataType::kFLOAT, DataType::kFLOAT,
                DataType::kFLOAT},
            {DataType::kHALF, DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT}, {0, 4, 5, 6},
            {PluginField("num_heads", &h4, PluginFieldType::kINT32, 1), PluginField("bounded", &b2, PluginFieldType::kINT32, 1)}});
    testPlugin(findCreator(creators, n, "CausalLinearAttention_TRT"),
        Spec{"CausalLinearAttention_TRT", {PluginField("eps", &eps, PluginFieldType::kFLOAT32, 1)},
            {{-1, -1, 4, 64}, {-1, -1, 4, 64}, {-1, -1, 4, 64}, {-1, 4, 64, 64}, {-1, 4, 64}},
            {DataType::kBF16, DataType::kBF16, DataType::kBF16, DataType::kFLOAT, DataType::kFLOAT},
            {DataType::kBF16, DataType::kFLOAT, DataType::kFLOAT}, {2, 3, 4},
            {PluginField("eps", &epsBad, PluginFieldType::kFLOAT32, 1)}});

    // TSSA: a constant channel count not divisible by num_heads is refused at build time
    {
        auto* c = findCreator(creators, n, "TSSA_TRT");
        PluginField f("num_heads", &h4, PluginFieldType::kINT32, 1);
        PluginFieldCollection fc{1, &f};
        std::unique_ptr<IPluginV3> p(c->createPlugin("x", &fc, TensorRTPhase::kBUILD));
        auto* build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
        FakeBuilder eb;
        DimsExprs in[2] = {dims(eb, {1, 8, 250}), dims(eb, {4})};
        DimsExprs out[1];
        check(build->getOutputShapes(in, 2, nullptr, 0, out, 1, eb) != 0, "TSSA_TRT: refuses C % num_heads != 0");
    }
    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
