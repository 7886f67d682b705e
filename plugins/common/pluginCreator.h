// One IPluginCreatorV3One per plugin class P: P::kNAME, P::fieldNames() and P::fromFields(name, fc).
#pragma once

#include "pluginCommon.h"

namespace tost_edge
{
namespace plugin
{

template <class P>
class PluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    PluginCreator()
        : mFields(P::fieldNames())
    {
        mFc.nbFields = static_cast<int32_t>(mFields.size());
        mFc.fields = mFields.data();
    }

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase) noexcept override
    {
        return P::fromFields(name == nullptr ? "" : name, fc);
    }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mFc; }
    char const* getPluginName() const noexcept override { return P::kNAME; }
    char const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
    char const* getPluginNamespace() const noexcept override { return kPLUGIN_NAMESPACE; }

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFc{};
};

} // namespace plugin
} // namespace tost_edge
