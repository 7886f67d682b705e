#include "causalTSSAPlugin.h"

#include "../kernels/tost_kernels.h"

using namespace nvinfer1;

namespace tost_edge
{
namespace plugin
{
namespace
{
// inputs: w, temp, denom_bias, pos, sum_wsq, sum_pi_wsq, sum_pi; outputs: y, sum_wsq, sum_pi_wsq, sum_pi
constexpr int32_t kIN = 7;
constexpr int32_t kOUT = 4;
constexpr int32_t kRANKS[kIN] = {3, 1, 2, 1, 3, 3, 2};
} // namespace

std::vector<PluginField> CausalTSSAPlugin::fieldNames()
{
    return {PluginField("num_heads", nullptr, PluginFieldType::kINT32, 1),
        PluginField("bounded", nullptr, PluginFieldType::kINT32, 1)};
}

CausalTSSAPlugin* CausalTSSAPlugin::fromFields(std::string const& name, PluginFieldCollection const* fc) noexcept
{
    int32_t h = 0, bounded = 0;
    if (!readInt(fc, kNAME, "num_heads", h) || !readInt(fc, kNAME, "bounded", bounded))
    {
        return nullptr;
    }
    if (h <= 0 || h > TOST_MAX_HEADS || (bounded != 0 && bounded != 1))
    {
        logError(std::string(kNAME) + ": expected num_heads in 1.." + std::to_string(TOST_MAX_HEADS)
            + " and bounded in {0, 1}, got " + std::to_string(h) + " and " + std::to_string(bounded));
        return nullptr;
    }
    return new (std::nothrow) CausalTSSAPlugin(name, h, bounded);
}

IPluginV3* CausalTSSAPlugin::clone() noexcept
{
    return new (std::nothrow) CausalTSSAPlugin(mName, mNumHeads, mBounded);
}

int32_t CausalTSSAPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kIN || nbOutputs != kOUT)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = outputTypes[2] = outputTypes[3] = DataType::kFLOAT;  // state is always fp32
    return 0;
}

int32_t CausalTSSAPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    if (nbInputs != kIN || nbOutputs != kOUT)
    {
        return -1;
    }
    if (!checkRanks("CausalTSSA_TRT", inputs, kIN, kRANKS))
    {
        return -1;
    }
    outputs[0] = inputs[0];
    outputs[1] = inputs[4];
    outputs[2] = inputs[5];
    outputs[3] = inputs[6];
    return 0;
}

bool CausalTSSAPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kIN || nbOutputs != kOUT || pos < 0 || pos >= kIN + kOUT)
    {
        return false;
    }
    auto const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return isFloatType(d.type);
    }
    if (pos == 3)
    {
        return d.type == DataType::kINT32;
    }
    if (pos == kIN)
    {
        return d.type == inOut[0].desc.type;
    }
    return d.type == DataType::kFLOAT;
}

int32_t CausalTSSAPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept
{
    auto const& d = inputDesc[0].dims;
    int32_t const D = static_cast<int32_t>(d.d[2] / mNumHeads);
    int const r = tost_causal_tssa_forward(inputs[0], static_cast<float const*>(inputs[1]),
        static_cast<float const*>(inputs[2]), inputDesc[2].dims.d[1], mBounded, static_cast<int32_t const*>(inputs[3]),
        static_cast<float const*>(inputs[4]), static_cast<float const*>(inputs[5]), static_cast<float const*>(inputs[6]),
        outputs[0], static_cast<float*>(outputs[1]), static_cast<float*>(outputs[2]), static_cast<float*>(outputs[3]),
        d.d[0], d.d[1], mNumHeads, D, toKernelDtype(inputDesc[0].type), stream);
    if (r != TOST_OK)
    {
        logError(std::string("CausalTSSA_TRT: ") + tost_last_error());
        return -1;
    }
    return 0;
}

PluginFieldCollection const* CausalTSSAPlugin::getFieldsToSerialize() noexcept
{
    mSerialized = {PluginField("num_heads", &mNumHeads, PluginFieldType::kINT32, 1),
        PluginField("bounded", &mBounded, PluginFieldType::kINT32, 1)};
    return publish();
}

} // namespace plugin
} // namespace tost_edge
