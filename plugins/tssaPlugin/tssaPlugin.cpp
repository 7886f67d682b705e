#include "tssaPlugin.h"

#include "../kernels/tost_kernels.h"

using namespace nvinfer1;

namespace tost_edge
{
namespace plugin
{

std::vector<PluginField> TSSAPlugin::fieldNames()
{
    return {PluginField("num_heads", nullptr, PluginFieldType::kINT32, 1)};
}

TSSAPlugin* TSSAPlugin::fromFields(std::string const& name, PluginFieldCollection const* fc) noexcept
{
    int32_t h = 0;
    if (!readInt(fc, kNAME, "num_heads", h))
    {
        return nullptr;
    }
    if (h <= 0 || h > TOST_MAX_HEADS)
    {
        logError(std::string(kNAME) + ": num_heads expected 1.." + std::to_string(TOST_MAX_HEADS) + ", got "
            + std::to_string(h));
        return nullptr;
    }
    return new (std::nothrow) TSSAPlugin(name, h);
}

IPluginV3* TSSAPlugin::clone() noexcept
{
    return new (std::nothrow) TSSAPlugin(mName, mNumHeads);
}

int32_t TSSAPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != 2 || nbOutputs != 1)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t TSSAPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    if (nbInputs != 2 || nbOutputs != 1 || inputs[0].nbDims != 3 || inputs[1].nbDims != 1)
    {
        logError("TSSA_TRT: expected inputs w [B, N, C] and temp [H]");
        return -1;
    }
    auto const* c = inputs[0].d[2];
    if (c->isConstant() && c->getConstantValue() % mNumHeads != 0)
    {
        logError("TSSA_TRT: w channels " + std::to_string(c->getConstantValue()) + " not divisible by num_heads "
            + std::to_string(mNumHeads));
        return -1;
    }
    outputs[0] = inputs[0];
    return 0;
}

bool TSSAPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 2 || nbOutputs != 1 || pos < 0 || pos > 2)
    {
        return false;
    }
    auto const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case 0: return isFloatType(d.type);
    case 1: return d.type == DataType::kFLOAT;
    default: return d.type == inOut[0].desc.type;
    }
}

size_t TSSAPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    auto const& m = inputs[0].max;
    return tost_tssa_workspace_size(m.d[0], m.d[1], mNumHeads, static_cast<int32_t>(m.d[2] / mNumHeads));
}

int32_t TSSAPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
    void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    auto const& d = inputDesc[0].dims;
    int64_t const B = d.d[0], N = d.d[1];
    int32_t const D = static_cast<int32_t>(d.d[2] / mNumHeads);
    size_t const ws = tost_tssa_workspace_size(B, N, mNumHeads, D);
    int const r = tost_tssa_forward(inputs[0], static_cast<float const*>(inputs[1]), outputs[0], B, N, mNumHeads, D,
        toKernelDtype(inputDesc[0].type), workspace, ws, stream);
    if (r != TOST_OK)
    {
        logError(std::string("TSSA_TRT: ") + tost_last_error());
        return -1;
    }
    return 0;
}

PluginFieldCollection const* TSSAPlugin::getFieldsToSerialize() noexcept
{
    mSerialized = {PluginField("num_heads", &mNumHeads, PluginFieldType::kINT32, 1)};
    return publish();
}

} // namespace plugin
} // namespace tost_edge
